"""The Responses API on top of runs: a response is a run on a thread, its Responses event
stream a projection of the run's events published to a broker stream of its own.

* :mod:`.objects` — ids, the response object, input items (pure);
* :mod:`.projection` — run events in, Responses events out (pure);
* :mod:`.fold` — the response object as a fold over its events; the broker projection (pure);
* :mod:`.service` — responses of one hub: started, projected, stored (asyncio).
"""
