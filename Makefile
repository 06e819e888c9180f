# On a fresh machine with Python 3.11 and pip:
#   make demo      - install vqzoo in .venv and run the offline demo (two pretrained zoo models)
#   make test      - install vqzoo with its test extra in .venv-test and run the test suite
#   make reproduce - re-measure the published figures on full real splits (every shipped model
#                    against its card and bars; the mnist-mlp recipe trained from scratch)
#   make bench     - install the benchmark extra (PyTorch) in .venv-bench and print the tables
#   make docs      - build the API reference (pdoc) into build/docs, failing on any warning

PYTHON ?= python3
TFDS_DATA_DIR ?= $(abspath ../shared/datasets/tensorflow_datasets)
export TFDS_DATA_DIR

DOC_MODULES = vqzoo vqzoo.nn vqzoo.pretrained vqzoo.training vqzoo.evaluation vqzoo.cpu_tuning vqzoo.configs vqzoo.images vqzoo.io vqzoo.folders vqzoo.grid vqzoo.cli

.PHONY: demo test reproduce bench docs clean

.venv/.done: pyproject.toml setup.cfg constraints.txt
	$(PYTHON) -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -c constraints.txt -e .
	touch $@

.venv-test/.done: pyproject.toml setup.cfg constraints.txt
	$(PYTHON) -m venv .venv-test
	.venv-test/bin/pip install -q --upgrade pip
	.venv-test/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $@

.venv-bench/.done: pyproject.toml setup.cfg
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install -q --upgrade pip
	.venv-bench/bin/pip install -q -e '.[data,bench]'
	touch $@

demo: .venv/.done
	.venv/bin/vqzoo demo --out vqzoo_demo.png

test: .venv-test/.done
	.venv-test/bin/python -m pytest -q -n 3 --dist worksteal -m "not reproduce"

reproduce: .venv-test/.done
	.venv-test/bin/python -m pytest -q -n 3 --dist worksteal -m reproduce

bench: .venv-bench/.done
	.venv-bench/bin/python benchmarks/run_all.py --json bench_results/latest.json

docs: .venv-test/.done
	.venv-test/bin/python -W error -m pdoc --no-show-source $(DOC_MODULES) -o build/docs

clean:
	rm -rf .venv .venv-test .venv-bench build *.egg-info
