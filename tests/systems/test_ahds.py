import torch

from tests.conftest import tiny_stage1_args, trials


def test_stage_out_of_memory_is_one_message_and_keeps_outputs(tiny_dir, tmp_path, monkeypatch, capsys):
    import launch
    from threestudio.systems.ahds import AHDSSystem

    orig = AHDSSystem.compute_losses

    def boom(self, cams, step):
        if step >= 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return orig(self, cams, step)

    monkeypatch.setattr(AHDSSystem, "compute_losses", boom)
    rc = launch.main([str(a) for a in tiny_stage1_args(tmp_path, steps=6)])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "stage 1 (AHDS) ran out of GPU memory" in line and "system.densify.max_points" in line
    (trial,) = trials(tmp_path)
    assert str(trial / "ckpts" / "last.ckpt") in line and "--resume" in line
    assert (trial / "ckpts" / "last.ckpt").is_file() and (trial / "configs" / "parsed.yaml").is_file()
