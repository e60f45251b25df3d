"""The test suites' one library (tests/pytest.ini puts tests/ on sys.path):

  cluster     where the servers are: the project cluster (scripts/cluster.sh,
              or PGHOST/PGPORT/PGUSER), a cluster.sh cluster of a suite's own
              (another port and data directory), the PostgreSQL binaries, and
              fresh_database()
  connection  conninfo() and connect(): a connection is always named by a
              libpq conninfo string (the form psycopg, psql and CREATE
              SUBSCRIPTION all take)
  harness     Outcome, call() and attempt(): run something, return its value
              or its SQLSTATE; figure() for the numbers a suite reports
"""
