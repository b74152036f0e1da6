"""Why a model misses: the stage that lost each pedestrian, and the case against the norm.

Stands on :mod:`hkd.models` (the staged forward pass), :mod:`hkd.eval`
(official matching, operating points) and :mod:`hkd.data`; never on the app.
"""
