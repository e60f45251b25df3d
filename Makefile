# workflow_ext: the two commands are `make demo` (the main job) and `make test`.
.PHONY: setup install demo test lint test-pgrx test-regress test-upgrade test-docs test-concurrency \
        test-migrators test-devkit test-replicas test-citus test-exporter test-package test-clients test-faults test-matrix psql stop clean bench bench-smoke package

# The PostgreSQL to build against: scripts/pg.sh is the one place that names
# it (`make demo PG=17`, `PG=17 make install` … pick another major: 15, the
# default, 16, 17 or 18; PG reaches the scripts through the environment).
# Expanded only where it is used.
PG_CONFIG = $(shell bash scripts/pg.sh get PG_CONFIG)
# The majors `make test` runs (after 15's every suite, the others'
# lint, pgrx, pg_regress, security and concurrency suites); `make test-matrix` runs all.
MATRIX ?= 15 16 17 18

setup:            ## install PostgreSQL 15, libclang, cargo-pgrx 0.18.1, test clients
	bash scripts/setup.sh

install: setup    ## build (release: the build that was benchmarked) and install the extension
	bash scripts/cluster.sh stop   # never replace the .so under a live cluster
	bash scripts/install.sh --release

demo: install     ## start the local cluster and race workers on one run
	bash scripts/cluster.sh start
	bash scripts/demo.sh

test:             ## every suite on 15, then lint, pgrx, pg_regress, security, concurrency on each other major of MATRIX (PG=NN: that major only)
	bash scripts/test.sh $(if $(PG),,--matrix "$(MATRIX)")

test-matrix:      ## every suite on 15, then lint, pgrx, pg_regress, security, concurrency on 16, 17 and 18
	bash scripts/test.sh --matrix "15 16 17 18"

lint:             ## cargo fmt --check, cargo clippy -D warnings
	WFX_SUITES=lint bash scripts/test.sh
test-pgrx:
	WFX_SUITES=pgrx bash scripts/test.sh
test-regress:
	WFX_SUITES=regress bash scripts/test.sh
test-upgrade:     ## ALTER EXTENSION UPDATE from every released version equals a fresh install
	WFX_SUITES=upgrade bash scripts/test.sh
test-migrators:   ## graphile-worker and the DevKit setup raced, raw and wrapped in bootstrap_begin/end
	WFX_SUITES=migrators bash scripts/test.sh
test-devkit:      ## the real @workflow/world-postgres (4.1.1, 4.3.7, 5.0 beta) on an attached table
	WFX_SUITES=devkit bash scripts/test.sh
test-replicas:    ## a streaming standby, a logical subscriber, pg_dump/pg_restore (clusters of its own)
	WFX_SUITES=replicas bash scripts/test.sh
test-citus:       ## a real Citus cluster (coordinator + 2 workers): distribute(), races, errors
	WFX_SUITES=citus bash scripts/test.sh
test-exporter:    ## prometheus-postgres-exporter with monitoring/workflow_ext_queries.yaml, scraped
	WFX_SUITES=exporter bash scripts/test.sh
test-package:     ## scripts/package.sh 15, then the .deb installed with dpkg -i without the source build
	WFX_SUITES=package bash scripts/test.sh
test-docs:        ## every ```sql block of README.md, its claimed results checked
	WFX_SUITES=docs bash scripts/test.sh
test-concurrency:
	WFX_SUITES=concurrency bash scripts/test.sh
test-clients:     ## examples/{node,python,rust} --check
	WFX_SUITES=clients bash scripts/test.sh
test-faults:      ## kills, crashes, timeouts, bad input (own cluster, port 54317)
	WFX_SUITES=faults bash scripts/test.sh

psql:             ## a psql session on the local cluster
	bash scripts/cluster.sh psql

stop:
	bash scripts/cluster.sh stop

clean: stop
	bash scripts/cluster.sh destroy
	cargo clean

package: setup    ## release build, one .deb per major (postgresql-NN-workflow-ext) in target/package/
	bash scripts/package.sh

bench:            ## release build, dedicated cluster, full side-by-side run -> BENCHMARKS.md
	bash scripts/bench.sh

bench-smoke:      ## tiny sizes, seconds: checks the benchmark scripts still work
	WFX_BENCH_SMOKE=1 bash scripts/bench.sh
