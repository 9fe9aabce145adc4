"""Operating a server: statistics and the stats line (``stats``), ``/metrics`` and
``/healthz`` (``metrics``), worker processes (``supervisor``) and log formats
(``logs``)."""
