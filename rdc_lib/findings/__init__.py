"""The findings: figure data read from docs/raw (``data``), the docs' SVG figures (``svg``), the notebook's plotly
figures (``interactive``) and the names tables give a row's defence (``labels``)."""
