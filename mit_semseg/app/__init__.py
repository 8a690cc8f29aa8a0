"""The web page to look at what a model sees (``mit-semseg-app``; ``pip install
'mit_semseg[app]'``): upload a photo, see the prediction over it, hover a pixel for its class
and probability, compare two models. A thin layer over :mod:`mit_semseg.inference` and
:mod:`mit_semseg.viz`; the labels are those ``test.py`` writes for the same model, photo and
scales. docs/app.md describes the page.

* :mod:`~mit_semseg.app.catalog`: the models offered (released ones, ``--run`` folders) and
  the two modes;
* :mod:`~mit_semseg.app.photos`: checking and reading an uploaded photo, the examples;
* :mod:`~mit_semseg.app.segment`: one photo through one model, and the files made from it;
* :mod:`~mit_semseg.app.jobs`: the line of photos per model, the models kept loaded;
* :mod:`~mit_semseg.app.server`: the Starlette app, its API and the static page;
* :mod:`~mit_semseg.app.main`: the command line.

Only ``server`` and ``main`` (when it starts the server) need the extra's packages
(starlette, uvicorn, python-multipart).
"""
