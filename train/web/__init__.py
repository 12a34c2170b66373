"""The studio's library: the web app (:mod:`train.web.app`), the fleet monitor
(:mod:`train.web.fleet`), jobs (:mod:`train.web.jobs`) and the security policy
(:mod:`train.web.security`). ``python -m train.studio`` (train/studio.py) is its command line."""
