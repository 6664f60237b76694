"""nnU-Net trainers. nnU-Net imports every module here by file name (nnUNet_extTrainer), so modules use absolute imports only."""
