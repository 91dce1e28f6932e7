# The CPU demo (make demo): a small chat model on DailyDialog in a few minutes of any 2-core CPU.
#   python data/demo/prepare.py ../shared/data/dailydialog/dialogues_validation.txt
#   (DailyDialog in a BPE of its own, then the mixture's other datasets below in it; with no file it
#   downloads DailyDialog, and without ../shared train on it alone: --dataset=dailydialog_demo)
#   python train.py config/train_chat_demo.py
#   python sample.py --out_dir=out-chat-demo --interactive
# Each setting below was chosen with dev/sweep_demo.py and eval.py: docs/results.md has what each buys.
out_dir = 'out-chat-demo'  # make demo's eval, plot and chat read the checkpoint here
# 1,000 dialogues are seen many times in the budget: other short dialogues and text (never scored), and
# tinyshakespeare's speeches (seen less than once), keep the model from learning them by heart
dataset = ('dailydialog_demo:0.7,chatterbot_demo:0.05,reddit_demo:0.05,webtext_demo:0.05,taskmaster_demo:0.05,'
           'shakespeare_demo:0.1')
max_minutes = 4.5  # a wall-clock budget: as many steps as fit, whatever the CPU (machine.Budget); with
# prepare, eval, plot and chat the whole demo stays under 5 minutes

# A BPE trained on the data (4,096 tokens: more text a step than 1-2k, and held-out words fare better
# than with 8k) and a small, fast model: in a few minutes more steps of a smaller batch beat a wider or
# deeper model.
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128  # holds a few of DailyDialog's short turns: longer windows cost steps
rope = True  # rotary positions: a turn looks the same wherever its window starts (exported as GPT-NeoX)
batch_size = 16  # small: in a fixed time more steps of a smaller batch learn more
dropout = 0.1  # on the residual stream: without it the val loss turns up within the budget
token_noise = 0.05  # random input tokens (targets kept): a regulariser of its own, so less dropout pays
weight_decay = 0.6  # with rope, heavier decay pays where more steps fit
zero_proj = True  # each block starts as the identity (its residual projections at 0)

muon = True  # fewer steps to a loss than AdamW
learning_rate = 4e-3  # a small model takes a high learning rate
lr_warmdown = 0.4  # the peak held for 60% of the steps, then a straight line down: more steps at the peak
min_lr = 0.0  # the warmdown ends at 0: a floor above it bought nothing
warmup_iters = 50  # short: the whole run is a couple of thousand steps at most
beta2 = 0.99  # few tokens a step: a shorter memory of the gradients' scale (as nanoGPT's small configs)

eval_interval = 400  # an eval covers 6 datasets: few and small ones, so the budget buys steps
eval_iters = 4  # batches per dataset at each eval
log_interval = 50  # a log line every few seconds
eval_sample = 'Hi, how are you today?'  # its reply at each eval shows how the chat is coming along
