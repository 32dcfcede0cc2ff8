# The Missive image: the worker by default; the gateway and the migrations use it too
# (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Sources stay in /app as well: alembic.ini and migrations/ are read from here.
COPY . .
RUN pip install . \
    && useradd --system --no-create-home missive

USER missive

CMD ["python", "worker.py"]
