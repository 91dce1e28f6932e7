# The CPU demo: a small character-level chat model on DailyDialog. Prepare, train, chat:
#   python data/dailydialog/prepare.py --tokenizer char --out_dir data/dailydialog_char
#   (add ../shared/data/dailydialog/dialogues_validation.txt to use the 1,000-dialogue sample offline)
#   python train.py config/train_chat_char.py
#   python sample.py --out_dir=out-chat-char --interactive
out_dir = 'out-chat-char'
dataset = 'dailydialog_char'

# Sized to train in about 4 minutes on 2 CPU cores: 4 x 128 (0.8M parameters) with 256 characters
# of context (a few turns). bf16 autocast, where the CPU has it, takes ~155 ms a step against ~235 ms
# in fp32 (bench/bench_train.py), so 1500 steps see 1500 x 16 x 256 = 6M characters. On the
# 1,000-dialogue sample in ../shared the val loss goes 4.86 -> 1.36 (train 1.30): too small a model to
# overfit here, so no dropout; replies are dialogue-shaped, if not always sensible.
n_layer = 4
n_head = 4
n_embd = 128
block_size = 256
batch_size = 16
dropout = 0.0

learning_rate = 2e-3  # a small model takes a high learning rate
max_iters = 1500
lr_decay_iters = 1500
min_lr = 2e-4
warmup_iters = 100
beta2 = 0.99

eval_interval = 250
eval_iters = 20
log_interval = 50
