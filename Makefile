# workflow_ext: the two commands are `make demo` (the main job) and `make test`.
.PHONY: setup install demo test test-pgrx test-regress test-concurrency psql stop clean bench bench-smoke

setup:            ## install PostgreSQL 15, libclang, cargo-pgrx 0.18.1, test clients
	bash scripts/setup.sh

install: setup    ## build and install the extension into the system PostgreSQL 15
	bash scripts/cluster.sh stop   # never replace the .so under a live cluster
	cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config

demo: install     ## start the local cluster and race workers on one run
	bash scripts/cluster.sh start
	bash scripts/demo.sh

test:             ## every suite: cargo pgrx test, pg_regress, concurrency
	bash scripts/test.sh

test-pgrx:
	WFX_SUITES=pgrx bash scripts/test.sh
test-regress:
	WFX_SUITES=regress bash scripts/test.sh
test-concurrency:
	WFX_SUITES=concurrency bash scripts/test.sh

psql:             ## a psql session on the local cluster
	bash scripts/cluster.sh psql

stop:
	bash scripts/cluster.sh stop

clean: stop
	bash scripts/cluster.sh destroy
	cargo clean

bench:            ## release build, dedicated cluster, full side-by-side run -> BENCHMARKS.md
	bash scripts/bench.sh

bench-smoke:      ## tiny sizes, seconds: checks the benchmark scripts still work
	WFX_BENCH_SMOKE=1 bash scripts/bench.sh
