"""What people read (layer 4): the markdown report with the paper's numbers beside the sweep's (``report``,
``references/paper.yaml``), its figures (``figures``), the W&B runs (``tracking``) and the W&B report and saved
view as code (``dashboard``). Reads the store; runs nothing."""
