# The pipeline's Airflow image: the official image plus this project's lock.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt /requirements.txt
RUN pip install --no-cache-dir -r /requirements.txt
ENV PYTHONPATH=/opt/airflow/include \
    GX_ANALYTICS_ENABLED=false
