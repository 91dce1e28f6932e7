# The CPU demo (make demo): a small chat model on DailyDialog in a few minutes of any 2-core CPU.
#   python data/dailydialog/prepare.py --tokenizer bpe:8192 --out_dir data/dailydialog_demo
#   (add ../shared/data/dailydialog/dialogues_validation.txt to use the 1,000-dialogue sample offline)
#   python train.py config/train_chat_demo.py
#   python sample.py --out_dir=out-chat-demo --interactive
out_dir = 'out-chat-demo'
dataset = 'dailydialog_demo'
max_minutes = 4.0  # a wall-clock budget: as many steps as fit, whatever the CPU (see train.py)

# Chosen with bench/sweep_demo.py and eval.py (README): a BPE trained on the data (8,192 tokens, ~3.7
# bytes each: a step predicts more text than with 1k-4k) and a small, fast model (in a few minutes more
# steps of a smaller batch beat a wider or deeper model). 1,000 dialogues are ~135k tokens, which it
# sees ~10 times: dropout and weight decay keep it from learning them by heart (1.80 -> 1.64 bits/byte).

n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
dropout = 0.2
weight_decay = 0.2

learning_rate = 2e-3  # a small model takes a high learning rate
min_lr = 2e-4
warmup_iters = 50
beta2 = 0.99

eval_interval = 200
eval_iters = 10
log_interval = 50
eval_sample = 'Hi, how are you today?'
