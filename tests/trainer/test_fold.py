"""The fold's state as saved in ``last.pt``: the same plain dict before and after the dataclass."""
import torch

from trainer.fold import FoldState


def test_fold_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    st = FoldState(next_epoch=3, best=[0.75, -0.5], best_epoch=2, bad_epochs=1,
                   history=[{"epoch": 0, "train_loss": 0.7}], stopped=False)
    d = st.to_dict()
    # the keys older checkpoints hold (resume across versions)
    assert list(d) == ["next_epoch", "best", "best_epoch", "bad_epochs", "history", "stopped"]
    torch.save({"state": d}, tmp_path / "s.pt")
    back = FoldState.from_dict(torch.load(tmp_path / "s.pt", weights_only=True)["state"])
    assert back == st
    assert FoldState.from_dict({}) == FoldState()
    assert FoldState().best is None and FoldState().best_epoch == -1
