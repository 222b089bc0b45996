FROM python:3.10-slim-bullseye
ENV PYTHONDONTWRITEBYTECODE 1
ENV PYTHONUNBUFFERED 1
RUN apt-get update \
  # dependencies for building Python packages
  && apt-get install -y build-essential \
  # psycopg2 dependencies
  && apt-get install -y libpq-dev \
  # cleaning up unused files
  && apt-get purge -y --auto-remove -o APT::AutoRemove::RecommendsImportant=false \
  && rm -rf /var/lib/apt/lists/*
COPY ./requirements /requirements
RUN pip install -r /requirements/local.txt
COPY ./compose/local/django/start /start
RUN sed -i 's/\r$//g' /start && chmod +x /start
WORKDIR /app
ENTRYPOINT ["/entrypoint"]
