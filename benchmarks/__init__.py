"""The benchmarks and experiment drivers of the repository (scripts, run from the repository root).

timing/   timing benchmarks: seconds, throughput, memory and profiles, printed or written to docs/raw;
drivers/  experiment drivers and doc writers: measure rows into docs/raw (``run``) and write docs/*.md (``doc``);
common.py what both share: raw rows with provenance, markdown tables, accuracy intervals, notes templates;
docs_registry.py  every generated doc, how it is rendered from docs/raw (read by regenerate_docs.py and its test).
"""
