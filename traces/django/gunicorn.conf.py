"""gunicorn settings of the ksm-planner sample site (see traces/README.md).

The command line of ``regenerate.py`` adds the per-run parts: ``--bind 127.0.0.1:<port>``,
``--workers`` and, for the preload setup, ``--preload``.
"""

wsgi_app = "ksmsite.wsgi:application"
worker_class = "sync"
workers = 8
bind = ["127.0.0.1:8000"]
# gunicorn >= 25.1 opens a control socket at one fixed path per user; two masters would
# collide on it and nothing here uses it.
control_socket_disable = True
timeout = 60
graceful_timeout = 20
keepalive = 0
max_requests = 0  # workers must live through the whole capture
proc_name = "ksm-sample"
accesslog = None
errorlog = "-"
loglevel = "warning"
