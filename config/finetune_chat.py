# Fine-tune OpenAI's GPT-2 (124M) into a chat model on DailyDialog (GPT-2 tokens). Prepare with
#   python data/dailydialog/prepare.py          (downloads all 13,118 dialogues)
# then, on 4 GPUs:
#   torchrun --standalone --nproc_per_node=4 train.py config/finetune_chat.py
# or on 1 GPU (the same global batch, 4 micro-steps in a row): python train.py config/finetune_chat.py
out_dir = 'out-finetune-chat'
dataset = 'dailydialog'
init_from = 'gpt2'  # or 'gpt2-medium' / 'gpt2-large' / 'gpt2-xl' with a smaller batch_size, or a local HF folder
# On preemptible machines use init_from = 'auto:gpt2': GPT-2 the first time, then rerunning the same
# command resumes out_dir/ckpt.pt (a SIGTERM saves one before exiting).
# Which tokens the loss trains on: 'all' (both speakers; DailyDialog's A and B are both people, so
# twice the data), 'B' (only the model's side, as in chat: A is the user), or 'replies' (every turn
# but each dialogue's opening). Eval prints val/A and val/B, the loss on each speaker's turns.
train_on = 'all'

# 4 micro-steps x 16 x 512 = 32,768 tokens per step: one micro-step per GPU on 4 GPUs. A dialogue
# is a few hundred tokens, so 512 is enough context and half the attention cost of GPT-2's 1024.
gradient_accumulation_steps = 4
batch_size = 16
block_size = 512

# DailyDialog is small (a couple of million tokens, ~60 steps per epoch): a few epochs at a small,
# constant learning rate, keeping the checkpoint with the best val loss since it soon overfits.
max_iters = 200
eval_interval = 20
eval_iters = 40
always_save_checkpoint = False
keep_last = 0  # best.pt and ckpt.pt are all a short finetune needs (each ~1.5 GB with AdamW's state)
eval_sample = 'Hi! What are you doing this weekend?'  # the model's reply, printed at every eval
learning_rate = 3e-5
decay_lr = False
dropout = 0.1
