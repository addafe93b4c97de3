"""The system under test: client, server, workers, worker hosts, and the wire between them.

Nothing in here imports pandas or matplotlib (a test checks it): these modules run in every
worker process, where start-up time and memory are part of what is measured.
"""
