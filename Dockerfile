FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PREFLOOP_VAR=/var/prefloop
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 && rm -rf /var/lib/apt/lists/*
COPY requirements.txt requirements-nodeps.txt ./
# CPU torch by default; the gpu-worker image is built with TORCH_INDEX pointing at a CUDA wheel index.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --extra-index-url ${TORCH_INDEX} -r requirements.txt \
 && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt
COPY . .
RUN SECRET_KEY=build ALLOWED_HOSTS=* DATABASE_URL=sqlite:////tmp/build.sqlite3 CELERY_BROKER_URL=memory:// \
    DJANGO_SETTINGS_MODULE=webapp.settings.production python manage.py collectstatic --noinput -v0
RUN useradd --create-home prefloop && mkdir -p /var/prefloop && chown prefloop /var/prefloop
USER prefloop
EXPOSE 8000
