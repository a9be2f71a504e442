#!/usr/bin/env bash
# A small real-data teacher/student comparison on CPU (eval.py / finetune.py). Run from the repository root:
#   bash small_run.sh        (about 20 minutes on 2 cores; needs ../shared/data)
set -euo pipefail
R=${R:-out/small_run}; G=../shared/data/glue; S=../shared/data/squad
export OMP_NUM_THREADS=1   # 2 shared cores: one thread per process is faster than two fighting for them
step() { local t0=$SECONDS; echo "== $*" >&2; "$@"; echo "== $(( SECONDS - t0 ))s: $1 $2" >&2; }

# 1. corpus -> shards with an 8k WordPiece vocabulary trained on it
[ -f $R/shards/meta.json ] || step python prepare.py ../shared/data/corpora --out $R/shards --vocab-size 8192
# 2. teacher: 4 x 128 BERT pretrained with the MLM loss alone
[ -d $R/teacher/model ] || step python train.py --mode=mlm --init=scratch --data=$R/shards --out_dir=$R/teacher \
  --layers=4 --hidden=128 --heads=2 --intermediate=512 --max_len=128 --batch_size=32 --micro_batch=32 --lr=1e-3 \
  --masking=uniform --max_steps=${TEACHER_STEPS:-600} --eval_every=0 --eval_batches=20 --log_every=50
# 3. student: layers 0 and 2 of the teacher, distilled with 5 L_ce + 2 L_mlm + 1 L_cos
[ -d $R/student/student ] || step python train.py --mode=distill --teacher=$R/teacher/model --data=$R/shards \
  --out_dir=$R/student --max_len=128 --batch_size=32 --micro_batch=32 --lr=1e-3 \
  --max_steps=${STUDENT_STEPS:-300} --eval_every=0 --eval_batches=20 --log_every=50
# 4. held-out MLM, same masks for both
step python eval.py mlm --model $R/teacher/model $R/student/student --data $R/shards --out $R/results/mlm.json
# 5. fine-tuning, one seed, short runs
FT="--lr=1e-4 --batch_size=32 --seeds=1 --save=false --log_every=50 --out=$R/results"
for m in teacher:$R/teacher/model student:$R/student/student; do
  name=${m%%:*}; model=${m#*:}
  step python finetune.py --task=SST-2 --data=$G --model=$model --name=$name $FT --train_limit=8000 --max_steps=200
  step python finetune.py --task=MRPC  --data=$G --model=$model --name=$name $FT --max_steps=120
  step python finetune.py --task=RTE   --data=$G --model=$model --name=$name $FT --max_steps=80
  step python finetune.py --task=STS-B --data=$G --model=$model --name=$name $FT --max_steps=180
  step python finetune.py --task=squad --train_file=$S/dev-v1.1.json --eval_file=$S/test-v1.1.json --model=$model \
    --name=$name $FT --max_len=128 --doc_stride=64 --max_query=32 --max_steps=150 --eval_limit=1000
done
# 6. Table 3 (size and CPU speed, STS-B dev, first 300 pairs), with the int8 student
step python eval.py speed --teacher $R/teacher/model --student $R/student/student --sts $G/STS-B/dev.tsv --limit 300 \
  --quantize --data $R/shards --threads 1 --out $R/results
# 7. the comparison table
step python eval.py table --results $R/results/teacher-*.json $R/results/student-*.json --out $R/results
