"""What every other package stands on: errors, experiment and inventory models, clocks, the cost model.

Imports nothing else of ``testbed`` (see the layer table in ``docs/design.md``).
"""
