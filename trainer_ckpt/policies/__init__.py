"""
Save and retention policies: *when* to save (`save`) and *what to keep* (`retention`), each a
plain Python class that answers from data alone (no clock, no disk, no framework), with a
registry of their own (`registry`: `register`, `by_name`, `from_params`, and the checks behind
every constructor's error message). AllenNLP builds them from a config through `from_params`;
no AllenNLP import is needed to use them.
"""
