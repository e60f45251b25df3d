"""One way to name a connection: a libpq conninfo string.

`server` is the conninfo of a server without a database (host, port, user:
what lib.cluster gives); conninfo() adds the database, connect() opens it.
Any other psycopg.connect keyword (options, connect_timeout, user …) goes
through connect()'s **kw and overrides the string's."""

import psycopg
from psycopg.conninfo import make_conninfo


def server_conninfo(host, port, user="postgres"):
    """The conninfo of a server: host (a socket directory or an address),
    port, user."""
    return make_conninfo(host=str(host), port=str(port), user=user)


def conninfo(dbname, server=None, **params):
    """The conninfo of `dbname` on `server` (default: the project cluster),
    with any other libpq parameters (user, sslmode …)."""
    if server is None:
        from lib.cluster import PROJECT
        server = PROJECT.server()
    return make_conninfo(server, dbname=dbname, **{k: str(v) for k, v in params.items()})


def connect(dbname="postgres", server=None, *, autocommit=True, **kw):
    """A psycopg connection to `dbname` on `server` (default: the project
    cluster), autocommit unless told otherwise."""
    return psycopg.connect(conninfo(dbname, server), autocommit=autocommit, **kw)
