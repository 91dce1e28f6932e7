# The CPU demo (make demo): a small chat model on DailyDialog in a few minutes of any 2-core CPU.
#   python data/demo/prepare.py ../shared/data/dailydialog/dialogues_validation.txt
#   (DailyDialog in a BPE of its own, then the mixture's other datasets below in it; with no file it
#   downloads DailyDialog, and without ../shared train on it alone: --dataset=dailydialog_demo)
#   python train.py config/train_chat_demo.py
#   python sample.py --out_dir=out-chat-demo --interactive
out_dir = 'out-chat-demo'
# 1,000 dialogues are ~145k tokens, seen ~10 times in the budget: other short dialogues and text (never
# scored) keep the model from learning them by heart (README: 0.2 of them 1.65 -> 1.63 bits/byte at equal
# time, 0.3 then 1.590 -> 1.585 at equal steps). tinyshakespeare's speeches (~390k tokens, less than once
# seen) as a third of that: 1.509 / 1.512 -> 1.504 / 1.508 at 1,600 steps (two seeds)
dataset = ('dailydialog_demo:0.7,chatterbot_demo:0.05,reddit_demo:0.05,webtext_demo:0.05,taskmaster_demo:0.05,'
           'shakespeare_demo:0.1')
max_minutes = 4.5  # a wall-clock budget: as many steps as fit, whatever the CPU (see train.py): their
# count is made early from the step time and again where the warmdown begins, and if a busy machine's
# steps get slower still, the run stops when the time is up anyway (short of its schedule's end); then
# ~12-15 s of prepare, eval, plot, chat: the whole demo ~4m40s-4m50s

# Chosen with bench/sweep_demo.py and eval.py (README): a BPE trained on the data (4,096 tokens, ~3.5
# bytes each: a step predicts more text than with 1-2k, and held-out text, in words the BPE never saw,
# does better than with 8k), a small, fast model (in a few minutes more steps of a smaller batch beat a
# wider or deeper model), Muon for its matrices, other text in the mix, a little dropout, weight decay.
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
rope = True  # rotary positions: a turn looks the same wherever its window starts (held-out bits/byte at
# 1,000 steps 1.593 -> 1.551; ~5% slower steps); the model then exports as GPT-NeoX, not GPT-2
batch_size = 16
dropout = 0.1  # on the residual stream; with 0 val turns up at ~600 steps
token_noise = 0.05  # 5% of the input tokens random (the targets kept): with it less dropout pays (held-out
# bits/byte at 900 / 1,600 steps: dropout 0.125 alone 1.555 / 1.526, with token_noise 1.548 / 1.514,
# dropout 0.1 with it 1.543 / 1.509, 0.075 1.544 / 1.514; token_noise 0.1 1.563 at 900, 0.075 1.519 at 1,600)
weight_decay = 0.6  # with rope, at 1,000 steps: 0.2 1.551, 0.4 1.545, 0.6 1.544, 0.8 1.545 (held-out bits/byte)
zero_proj = True  # each block starts as the identity (its residual projections at 0): held-out bits/byte
# at 1,600 steps, seeds 1337 / 2 / 3, 1.504 / 1.508 / 1.500 -> 1.498 / 1.504 / 1.500; at 1,000 1.531 -> 1.526

muon = True  # fewer steps to a loss than AdamW (held-out 1.66 -> 1.63 bits/byte at equal time)
learning_rate = 4e-3  # a small model takes a high learning rate (at 1,000 / 1,400 steps, held-out bits/byte
# with 3e-3: 1.612 / 1.581, 4e-3: 1.603 / 1.581, 5e-3: 1.602 at 1,000; 2e-3: 1.585 at 1,400)
lr_warmdown = 0.4  # the peak held for 60% of the steps, then straight down to 0: more steps at the peak
min_lr = 0.0  # than the cosine's (to 4e-4: 1.604 -> 1.592 at 1,000 steps, 1.582 -> 1.580 at 1,400)
warmup_iters = 50
beta2 = 0.99

eval_interval = 400  # an eval of 6 datasets x 4 batches: few and small, so the budget buys steps (at one
eval_iters = 4  # thread, every 200 on 10 batches cost a fifth of the steps: 648 -> 779, 1.692 -> 1.667)
log_interval = 50
eval_sample = 'Hi, how are you today?'
