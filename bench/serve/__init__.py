"""``tollgate bench serve``: an open-loop load generator for any OpenAI-compatible server.

Poisson arrivals at each request rate (``load``), streamed requests timed from the client's side
(``run``), per-rate figures, saturation and cost (``stats``, ``cost``), and the table, JSON, CSV
and charts (``report``). ``cli.main`` is what ``tollgate bench serve`` runs.
"""
