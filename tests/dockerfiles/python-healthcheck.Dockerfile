FROM python:3.12-slim
RUN pip install --no-cache-dir flask==3.0.2
COPY app.py /srv/app.py
WORKDIR /srv
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:5000/health')"]
CMD ["python", "app.py"]
