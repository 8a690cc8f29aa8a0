"""The original package's ``mit_semseg.lib`` path; only ``lib.nn`` remains (see ``nn``)."""
