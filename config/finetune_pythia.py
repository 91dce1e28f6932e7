# Fine-tune EleutherAI's Pythia-160M (GPT-NeoX blocks: parallel residual, rotary on a quarter of each
# head, its own output matrix) into a chat model on DailyDialog, in Pythia's own tokens:
#   python data/dailydialog/prepare.py --tokenizer=pythia-160m --out_dir=data/dailydialog_pythia
#   python train.py config/finetune_pythia.py
# then chat with it: python sample.py --out_dir=out-finetune-pythia --interactive
out_dir = 'out-finetune-pythia'
dataset = 'dailydialog_pythia'  # train.py refuses data in another tokenizer than the model's
init_from = 'pythia-160m'  # 'pythia-70m' ... 'pythia-1.4b-deduped' (smaller batch_size), or a local HF folder
train_on = 'B'  # the loss on the model's side only, as it will chat: A's turns are the user's

# 4 x 8 x 512 = 16,384 tokens per step; a dialogue is a few hundred tokens, far below Pythia's 2048
gradient_accumulation_steps = 4
batch_size = 8
block_size = 512

# a small dataset: a few epochs at a small constant rate, keeping the best val loss (it overfits soon)
max_iters = 300
eval_interval = 25
eval_iters = 40
always_save_checkpoint = False
keep_last = 0  # best.pt and ckpt.pt are enough for a short finetune
eval_sample = 'Hi! What are you doing this weekend?'  # the model's reply, printed at every eval
learning_rate = 6e-5  # the small Pythias take a larger step than GPT-2 124M's 3e-5 without forgetting
decay_lr = False
dropout = 0.0  # Pythia was pretrained without dropout
