"""gunicorn settings for every way Tandem serves HTTP (`make demo`, the Docker image, compose).

Threaded workers: a long export or model download streams in its own thread while the worker's
main loop keeps its heartbeat, so gunicorn's timeout never cuts a response short (a sync worker is
killed after `timeout` seconds whatever it is sending: about 2M export rows at 30 s).
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# With gthread this bounds only a silent worker process, not a request's duration.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# gunicorn's control socket lives in the home folder, shared by every instance on the host.
control_socket_disable = True
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
# Behind a TLS-terminating proxy the scheme comes from X-Forwarded-Proto (see SECURE_PROXY_SSL_HEADER).
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")
