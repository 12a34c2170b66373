"""The feedback loop: collect uncertain frames from the fleet (``collect``), keep them (``store``, ``samples``),
label them (``label``), retrain on them with replay (``retrain``) and roll the new bundle out, signed
(``publish``, with the fleet's keys from ``keys``)."""
