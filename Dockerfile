# The pipeline's Airflow image: the official image plus this project's lock.
FROM apache/airflow:3.3.2-python3.11
# Pango (and a font) for WeasyPrint, which prints the statements' PDF (docs/statements.md)
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
USER airflow
COPY requirements.txt /requirements.txt
RUN pip install --no-cache-dir -r /requirements.txt
ENV PYTHONPATH=/opt/airflow/include \
    GX_ANALYTICS_ENABLED=false
