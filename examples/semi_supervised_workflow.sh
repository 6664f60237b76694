#!/usr/bin/env bash
# A semi-supervised study from a fully labeled nnU-Net dataset, step by step.
# Example: ACDC in nnU-Net raw format as Dataset927 (2d configuration, 10% of the patients labeled).
# Adapt the ids, configuration and trainer; on a GPU drop "-device cpu" and the CPU plans.
set -euo pipefail
: "${nnUNet_raw:?export nnUNet_raw, nnUNet_preprocessed and nnUNet_results as for nnU-Net}"

SRC=927          # fully labeled source dataset
DST=527          # new semi-supervised dataset
CFG=2d
TRAINER=nnUNetTrainerMeanTeacher

# 1) hide the labels of 90% of the patients (both frames of a patient stay together), keep 20% for testing
nnunet-ssl split -d $SRC --labeled 10% --test 20% --seed 0 --id $DST --group-regex '(patient\d+)'

# 2) nnU-Net planning and preprocessing of the labeled cases (unchanged nnU-Net)
nnUNetv2_plan_and_preprocess -d $DST -c $CFG

# 3) preprocess imagesUnlabeled/ with the same plans (the trainer would also do this on demand)
nnunet-ssl preprocess-unlabeled -d $DST -c $CFG

# 4) train the baseline and the semi-supervised trainer (5 folds on a GPU; fold 0 here)
nnUNetv2_train $DST $CFG 0 -tr nnUNetTrainer
nnUNetv2_train $DST $CFG 0 -tr $TRAINER

# 5) predict the held-out test set with nnU-Net's predictor and evaluate
for tr in nnUNetTrainer $TRAINER; do
  nnUNetv2_predict -d $DST -c $CFG -tr $tr -f 0 -i "$nnUNet_raw"/Dataset${DST}_*/imagesTs -o predictions_$tr
  nnunet-ssl evaluate -pred predictions_$tr -ref "$nnUNet_raw"/Dataset${DST}_*/labelsTs -d $DST -o eval_$tr
done
