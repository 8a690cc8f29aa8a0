"""The command-line programs (``train.py``, ``eval.py``, ``eval_multipro.py``, ``test.py``)."""
