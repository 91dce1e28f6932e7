# make demo: prepare DailyDialog (a BPE of its own) and a little other text, train a small chat model for
#   4.5 minutes on the CPU, score it on held-out dialogues, draw its loss curves, chat with it.
#   DTYPE=float32 forces fp32.
# make test: the test suite. Both install into .venv from requirements.txt first.
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED := $(abspath ../shared)
# offline: use the shared copies of the data and the GPT-2 vocab when they are beside the repo
ifneq ($(wildcard $(SHARED)/tiktoken_cache),)
export TIKTOKEN_CACHE_DIR ?= $(SHARED)/tiktoken_cache
endif
DEMO_DATA ?= $(wildcard $(SHARED)/data/dailydialog/dialogues_validation.txt)
# Beside ../shared the demo's 1,000 DailyDialog dialogues are mixed with other short dialogues and web
# text in its BPE (config/train_chat_demo.py); else its official train + validation splits (not test)
# are downloaded and trained on alone. It is trained on alone too when a part of the mixture is missing.
DEMO_PARTS := webtext chatterbot_corpus/english reddit/RC_2005-12.zst \
	taskmaster4/TM-4-2024_data_00.json tinyshakespeare/input.txt
DEMO_EXTRAS := $(if $(filter $(words $(DEMO_PARTS)),$(words $(wildcard $(addprefix $(SHARED)/data/,$(DEMO_PARTS))))),yes)
DTYPE ?=

.PHONY: demo test
demo: $(VENV)/.installed
	$(PY) data/demo/prepare.py $(DEMO_DATA)
	$(PY) train.py config/train_chat_demo.py $(if $(DEMO_EXTRAS),,--dataset=dailydialog_demo) $(if $(DTYPE),--dtype=$(DTYPE))
	$(PY) eval.py --out_dir=out-chat-demo --hits=20
	$(PY) plot.py out-chat-demo
	printf 'Hi, how are you today?\nWhat do you do for a living?\nWhere should we go for dinner?\n' | \
		$(PY) sample.py --out_dir=out-chat-demo --interactive

test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=15 tests  # the slowest tests named: the suite should stay well under 10 minutes

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@
