"""The parts of ``tollgate bench chaos``: a failing upstream, processes, load, verdict."""
