# The README's commands. Everything installs into .venv from the lock files.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
READY  := $(VENV)/.ready-$(shell cat requirements.txt requirements-dev.txt Makefile | cksum | cut -d' ' -f1)
MONTH  ?= 2026-10

.PHONY: setup demo test standalone screenshot lint bench-excel bench-rating bench-pipeline bench-dag bench-sftp bench-load bench-prepaid bench-ui portal portal-screenshot cluster postgres-server openssh-server chromium redis-server pdf-libs clean

$(READY): requirements.txt requirements-dev.txt Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-input -r requirements-dev.txt
	printf '%s\n' "$(CURDIR)/include" "$(CURDIR)/devkit" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/cdr_billing_include.pth"
	rm -f $(VENV)/.ready-* && touch $@

setup: $(READY)

demo: setup pdf-libs
	$(BIN)/python -m cdr_devkit.demo --month $(MONTH)

test: setup postgres-server openssh-server chromium redis-server pdf-libs
	$(BIN)/python -m pytest

standalone: setup
	$(BIN)/python -m cdr_devkit.standalone --month $(MONTH)

# docs/billing-*.png: the README's pictures of the Billing page in the Airflow UI (needs Debian's chromium).
screenshot: demo
	$(BIN)/python -m cdr_devkit.screenshot --month $(MONTH)

# The compose stack's topology without Docker (CeleryExecutor, Redis, two workers, sshd, the
# portal), planned from docker-compose.yaml: bills MONTH and prints where each task ran;
# ARGS="--keep" stays up, ARGS="--workers 3" scales.
cluster: setup postgres-server openssh-server redis-server pdf-libs
	$(BIN)/python -m cdr_devkit.cluster --month $(MONTH) $(ARGS)

# The users' self-service portal on the demo's billing database (after make demo); Ctrl-C stops it.
portal: setup pdf-libs
	$(BIN)/python -m cdr_devkit.portal

# docs/portal.png: the portal signed in as a demo user (needs Debian's chromium).
portal-screenshot: setup chromium
	$(BIN)/python -m cdr_devkit.portal --screenshot docs/portal.png

bench-excel: setup
	$(BIN)/python -m cdr_devkit.bench_excel

bench-rating: setup
	$(BIN)/python -m cdr_devkit.bench_rating

# Options via ARGS, e.g. make bench-pipeline ARGS="--calls 200000 --no-validation"
bench-pipeline: setup
	$(BIN)/python -m cdr_devkit.bench_pipeline $(ARGS)

# The whole DAG (SFTP, PostgreSQL billing DB) on the same month, e.g. make bench-dag ARGS="--calls 200000 --sqlite"
bench-dag: setup openssh-server redis-server
	$(BIN)/python -m cdr_devkit.bench_dag $(ARGS)

# The fetch against OpenSSH's own sftp client, both on the benchmark month served by sshd,
# e.g. make bench-sftp ARGS="--calls 1000000 --files 2 --repeat 2"
bench-sftp: setup openssh-server
	$(BIN)/python -m cdr_devkit.bench_sftp $(ARGS)

# The billing load against a bare server-side COPY of the same billed calls,
# e.g. make bench-load ARGS="--calls 2000000 --files 4 --repeat 2"
bench-load: setup postgres-server
	$(BIN)/python -m cdr_devkit.bench_load $(ARGS)

# The prepaid DAG on a day of 48 half-hour files on a running Airflow, e.g.
# make bench-prepaid ARGS="--accounts 2000 --files 4 --calls 80000"
bench-prepaid: setup
	$(BIN)/python -m cdr_devkit.bench_prepaid $(ARGS)

# Every Billing page timed on a 10-million-call month, e.g. make bench-ui ARGS="--calls 1000000"
bench-ui: setup
	$(BIN)/python -m cdr_devkit.bench_ui $(ARGS)

lint: setup
	$(BIN)/ruff check dags include devkit plugins tests

# The tests start their own PostgreSQL cluster; they need the server binaries.
postgres-server:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  echo "Installing the PostgreSQL server package for the tests (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# The browser tests drive Debian's headless Chromium over the DevTools protocol.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "Installing Chromium for the browser tests (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The SFTP tests run against OpenSSH's sshd as well (cdr_devkit.openssh_server).
openssh-server:
	@test -x /usr/sbin/sshd || command -v sshd >/dev/null || { \
	  echo "Installing the OpenSSH server package for the tests (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null; }

# The cluster (CeleryExecutor) and its tests run Debian's redis-server as the Celery broker.
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "Installing the Redis server package for the cluster (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# Statements are rendered to PDF by WeasyPrint, which needs Pango and a font (Debian packages).
pdf-libs:
	@ldconfig -p | grep -q libpangoft2-1.0.so.0 && fc-list | grep -qi dejavu || { \
	  echo "Installing Pango and DejaVu fonts for the statements' PDF (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core >/dev/null; }

clean:
	rm -rf .airflow .demo .bench .cluster
