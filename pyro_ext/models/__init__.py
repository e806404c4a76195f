"""Pyro models: ports of posteriordb models (``posteriordb``) and test problems."""
