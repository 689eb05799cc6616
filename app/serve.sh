#!/bin/sh
# Serve the chapter 6 app (control_app.ipynb) as a web page with Voila, offline and on this machine only.
# `make app` runs it on port 8866; tests/test_browser_app.py runs it on a free port. Extra arguments go to voila.
#   --template=offline   Voila's lab template without its Font Awesome stylesheets from a CDN (share/jupyter)
#   extension_denylist   JupyterLab extensions that have no business in the app (nbgrader's fails to load there)
here=$(cd "$(dirname "$0")" && pwd)
JUPYTER_PATH="$here/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}" exec "${VOILA:-voila}" "$here/control_app.ipynb" \
  --template=offline \
  --VoilaConfiguration.extension_denylist="['@jupyter/nbgrader', '@jupyter-notebook/lab-extension']" \
  --no-browser --Voila.ip=127.0.0.1 "$@"
