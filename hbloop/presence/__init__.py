"""Cluster-wide presence through Redis: the non-blocking Redis link on the event loop
(``redis_link``), a node's model of its members and the cluster's (``node``), the key
layout and Lua scripts (``scripts``), and the blocking readers behind ``hbloop who``
and ``hbloop watch`` (``tools``)."""
