"""Compatibility for tests/docs only, until it imports tests/lib (lib.cluster,
lib.connection) like every other suite; then delete this file. conninfo()
here is the keyword dict tests/docs spreads into psycopg.connect(**…); the
library's conninfo is a libpq string."""

from psycopg.conninfo import conninfo_to_dict

from lib import connection
from lib.cluster import ROOT, fresh_database, setting  # noqa: F401  (re-exported)


def conninfo(dbname):
    return conninfo_to_dict(connection.conninfo(dbname))
