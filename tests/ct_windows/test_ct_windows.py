"""CT windowing: the window formula by hand, tissue separation on HU phantoms, the dataset conversion
(geometry, labels, idempotence, interrupts, refusals) and the --images/--like path for new scans."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from ct_phantoms import DIRECTION, ORIGIN, SPACING_XYZ, TISSUES_HU, make_ct_dataset, phantom, write_nifti
from nnunet_ssl import cli
from nnunet_ssl.data import ct_windows
from nnunet_ssl.data.ct_windows import (PRESETS, RECORD_FILE, RECORD_KEY, Window, apply_window, convert_dataset,
                                        convert_folder, parse_window, parse_windows, window_stack)
from nnunet_ssl.errors import UserError

RAW = os.environ["nnUNet_raw"]
WINDOWS = [PRESETS[n] for n in ("abdomen", "chest", "bone")]


def _read(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


# ------------------------------------------------------------------------------------------ formula


def test_abdomen_window_by_hand():
    # abdomen L 40, W 400: lower = 40 - 200 = -160, upper = 240; v = clip((HU + 160) / 400, 0, 1)
    # -1000 -> (-840)/400 < 0 -> 0;  -160 -> 0/400 = 0;  40 -> 200/400 = 0.5;  240 -> 400/400 = 1;
    # 1000 -> 1160/400 > 1 -> 1
    hu = np.array([-1000, -160, 40, 240, 1000], dtype=np.int16)
    np.testing.assert_allclose(apply_window(hu, PRESETS["abdomen"]), [0, 0, 0.5, 1, 1], atol=1e-7)
    assert apply_window(hu, PRESETS["abdomen"]).dtype == np.float32


def test_chest_and_bone_windows_by_hand():
    # chest L -600, W 1500: lower = -600 - 750 = -1350; v = (HU + 1350) / 1500
    # -1000 -> 350/1500 = 0.233333;  -850 -> 500/1500 = 0.333333;  -600 -> 750/1500 = 0.5;  150 -> 1
    np.testing.assert_allclose(apply_window(np.array([-1000, -850, -600, 150]), PRESETS["chest"]),
                               [350 / 1500, 500 / 1500, 0.5, 1.0], atol=1e-6)
    # bone L 400, W 1800: lower = 400 - 900 = -500; v = (HU + 500) / 1800
    # 40 -> 540/1800 = 0.3;  700 -> 1200/1800 = 0.666667;  1200 -> 1700/1800 = 0.944444;  -600 -> 0
    np.testing.assert_allclose(apply_window(np.array([40, 700, 1200, -600]), PRESETS["bone"]),
                               [0.3, 1200 / 1800, 1700 / 1800, 0.0], atol=1e-6)


def test_window_stack_channel_order():
    hu = np.array([[-1000.0, 40.0]])
    out = window_stack(hu, WINDOWS)
    assert out.shape == (3, 1, 2)
    np.testing.assert_allclose(out[:, 0, 1], [0.5, 1390 / 1500, 0.3], atol=1e-6)  # 40 HU in abdomen, chest, bone


def test_parse_window():
    assert parse_window("abdomen") == PRESETS["abdomen"] and parse_window("BONE") == PRESETS["bone"]
    assert parse_window("40:400") == Window("L40W400", 40.0, 400.0)
    w = parse_window("lung=-600:1500")
    assert (w.name, w.lower, w.upper) == ("lung", -1350.0, 150.0)
    for bad in ("liver", "40", "40:0", "40:-10", "a=b:c"):
        with pytest.raises(UserError):
            parse_window(bad)
    with pytest.raises(UserError, match="given twice"):
        parse_windows(["abdomen", "abdomen"])


def test_phantom_each_window_separates_what_it_should():
    p = phantom(0)
    mean = {name: {t: float(v[p[t]].mean()) for t in TISSUES_HU}
            for name, v in zip(("abdomen", "chest", "bone"), window_stack(p["hu"], WINDOWS))}
    abdomen, chest, bone = mean["abdomen"], mean["chest"], mean["bone"]
    # abdomen: fat -100 -> 60/400 = 0.15, soft tissue 40 -> 0.5: separated; air and lung both 0; bone saturates at 1
    assert abdomen["fat"] == pytest.approx(0.15) and abdomen["soft"] == pytest.approx(0.5)
    assert abdomen["air"] == abdomen["lung"] == 0.0
    assert abdomen["bone"] == abdomen["cortical"] == 1.0
    # chest: air -1000 -> 0.2333 vs lung -850 -> 0.3333 (the abdomen window cannot tell them apart), fat 0.8333
    assert chest["lung"] - chest["air"] == pytest.approx(0.1, abs=1e-6)
    assert chest["fat"] == pytest.approx(1250 / 1500, abs=1e-6) and chest["bone"] == 1.0
    # bone: soft tissue 0.3 vs bone 0.6667 vs cortical 0.9444 (the abdomen window saturates both bones)
    assert bone["soft"] == pytest.approx(0.3) and bone["bone"] == pytest.approx(1200 / 1800, abs=1e-6)
    assert bone["cortical"] - bone["bone"] == pytest.approx(500 / 1800, abs=1e-6)
    # the abdomen window resolves fat vs soft tissue 4.4x better than the bone window (0.35 vs 140/1800 = 0.0778)
    assert (abdomen["soft"] - abdomen["fat"]) / (bone["soft"] - bone["fat"]) == pytest.approx(0.35 / (140 / 1800))


# ------------------------------------------------------------------------------------------ dataset conversion


@pytest.fixture
def ct_source(tmp_path):
    return make_ct_dataset(str(tmp_path / "Dataset730_Phantom"))


def test_convert_dataset_geometry_labels_and_values(ct_source, tmp_path):
    target = str(tmp_path / "Dataset731_PhantomWindows")
    r = convert_dataset(ct_source, target, WINDOWS, num_processes=2, progress=False)  # two worker processes
    assert sorted(r.converted) == ["ph_000", "ph_001", "ph_002", "ph_010", "ph_011", "ph_020"] and not r.skipped
    assert sorted(r.copied) == ["categoryLabels.json", "labelsTr/ph_000.nii.gz", "labelsTr/ph_001.nii.gz",
                                "labelsTr/ph_002.nii.gz", "labelsTs/ph_020.nii.gz"]
    for sub, case in (("imagesTr", "ph_001"), ("imagesUnlabeled", "ph_010"), ("imagesTs", "ph_020")):
        src = sitk.ReadImage(os.path.join(ct_source, sub, f"{case}_0000.nii.gz"))
        hu = sitk.GetArrayFromImage(src)
        for k, w in enumerate(WINDOWS):
            out = sitk.ReadImage(os.path.join(target, sub, f"{case}_{k:04d}.nii.gz"))
            assert out.GetSize() == src.GetSize()
            # exactly the source's header values (NIfTI stores float32, so 0.8 reads back as 0.800000011920929)
            assert out.GetSpacing() == src.GetSpacing() and np.allclose(src.GetSpacing(), SPACING_XYZ)
            assert out.GetOrigin() == src.GetOrigin() and np.allclose(src.GetOrigin(), ORIGIN)
            assert out.GetDirection() == src.GetDirection() == DIRECTION
            assert out.GetPixelID() == sitk.sitkFloat32
            np.testing.assert_array_equal(sitk.GetArrayFromImage(out), apply_window(hu, w))
    for sub, case in (("labelsTr", "ph_000"), ("labelsTs", "ph_020")):
        with open(os.path.join(ct_source, sub, case + ".nii.gz"), "rb") as a, \
                open(os.path.join(target, sub, case + ".nii.gz"), "rb") as b:
            assert a.read() == b.read()
    dj = json.load(open(os.path.join(target, "dataset.json")))
    assert dj["channel_names"] == {"0": "noNorm", "1": "noNorm", "2": "noNorm"}
    assert dj["labels"] == {"background": 0, "soft": 1, "bone": 2} and dj["numTraining"] == 3
    assert dj[RECORD_KEY]["windows"] == [w.to_json() for w in WINDOWS]
    assert dj[RECORD_KEY]["source"] == "Dataset730_Phantom"
    assert json.load(open(os.path.join(target, RECORD_FILE)))["windows"] == dj[RECORD_KEY]["windows"]
    assert not [n for n in os.listdir(target) if n.startswith(".")]  # no temporary folder left


def test_normalisation_maps_to_nnunet_no_normalization():
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import NoNormalization
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

    assert get_normalization_scheme(ct_windows.CHANNEL_NAME) is NoNormalization


def test_rerun_skips_finished_cases_and_redoes_interrupted_ones(ct_source, tmp_path):
    target = str(tmp_path / "Dataset732_PhantomWindows")
    convert_dataset(ct_source, target, WINDOWS, progress=False)
    kept = os.path.join(target, "imagesTr", "ph_000_0000.nii.gz")
    mtime = os.stat(kept).st_mtime_ns
    os.remove(os.path.join(target, "imagesUnlabeled", "ph_011_0002.nii.gz"))  # as if stopped mid-case
    r = convert_dataset(ct_source, target, WINDOWS, progress=False)
    assert r.converted == ["ph_011"] and len(r.skipped) == 5 and r.copied == []
    assert os.stat(kept).st_mtime_ns == mtime
    assert os.path.isfile(os.path.join(target, "imagesUnlabeled", "ph_011_0002.nii.gz"))


def test_ctrl_c_keeps_finished_cases(ct_source, tmp_path, monkeypatch):
    target = str(tmp_path / "Dataset733_PhantomWindows")
    real_write, calls = ct_windows.write_image, []

    def write_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 3 * 2 + 2:  # third case, third channel
            raise KeyboardInterrupt
        real_write(*a, **k)

    monkeypatch.setattr(ct_windows, "write_image", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert_dataset(ct_source, target, WINDOWS, progress=False)
    images = sorted(os.listdir(os.path.join(target, "imagesTr")))
    assert images == [f"ph_00{c}_000{k}.nii.gz" for c in (0, 1) for k in range(3)]  # nothing of the third case
    assert not os.path.exists(os.path.join(target, "dataset.json"))  # incomplete datasets have no dataset.json
    assert not [n for n in os.listdir(target) if n.startswith(".")]
    monkeypatch.setattr(ct_windows, "write_image", real_write)
    r = convert_dataset(ct_source, target, WINDOWS, progress=False)
    assert len(r.converted) == 4 and sorted(r.skipped) == ["ph_000", "ph_001"]
    assert os.path.isfile(os.path.join(target, "dataset.json"))


def test_refusals_before_writing(tmp_path):
    target = str(tmp_path / "out")
    mri = make_ct_dataset(str(tmp_path / "mri"), train=(0,), unlabeled=(), test=(), channel_names={"0": "MRI"})
    with pytest.raises(UserError, match="channel 'MRI', not 'CT'"):
        convert_dataset(mri, target, WINDOWS, progress=False)
    two = make_ct_dataset(str(tmp_path / "two"), train=(0,), unlabeled=(), test=(),
                          channel_names={"0": "CT", "1": "CT"})
    with pytest.raises(UserError, match="has 2 channels"):
        convert_dataset(two, target, WINDOWS, progress=False)
    assert not os.path.exists(target)
    src = make_ct_dataset(str(tmp_path / "ct"), train=(0,), unlabeled=(), test=())
    convert_dataset(src, target, WINDOWS, progress=False)
    with pytest.raises(UserError, match="converted with other windows"):
        convert_dataset(src, target, WINDOWS[:2], progress=False)
    with pytest.raises(UserError, match="already a windowed dataset"):  # converting the converted dataset
        convert_dataset(target, str(tmp_path / "twice"), WINDOWS, progress=False)
    other = tmp_path / "occupied"
    other.mkdir()
    (other / "notes.txt").write_text("someone's data")
    with pytest.raises(UserError, match="already exists with other content"):
        convert_dataset(src, str(other), WINDOWS, progress=False)
    assert os.listdir(other) == ["notes.txt"]


def test_bad_case_is_reported_and_the_others_are_kept(tmp_path):
    src = make_ct_dataset(str(tmp_path / "src"), train=(0, 1), unlabeled=(), test=())
    write_nifti(np.clip(phantom(1)["hu"], 0, 1).astype(np.float32), os.path.join(src, "imagesTr", "ph_001_0000.nii.gz"))
    target = str(tmp_path / "out")
    expected = r"(?s)1 case\(s\) could not be converted.*ph_001: ph_001_0000.nii.gz has all values in \[0, 1\]"
    with pytest.raises(UserError, match=expected):
        convert_dataset(src, target, WINDOWS, progress=False)
    assert os.path.isfile(os.path.join(target, "imagesTr", "ph_000_0002.nii.gz"))
    assert not os.path.exists(os.path.join(target, "dataset.json"))


# ------------------------------------------------------------------------------------------ command line


def test_command_dataset_and_images_like(tmp_path, capsys):
    make_ct_dataset(os.path.join(RAW, "Dataset734_PhantomCli"), train=(0, 1), unlabeled=(10,), test=())
    argv = ["convert-ct-windows", "-d", "734", "--id", "735", "--windows", "abdomen", "lung=-600:1500", "bone"]
    assert cli.main(argv) == 0
    target = os.path.join(RAW, "Dataset735_PhantomCliWindows")
    assert "3 case(s) converted" in capsys.readouterr().out
    windows = json.load(open(os.path.join(target, "dataset.json")))[RECORD_KEY]["windows"]
    assert [w["name"] for w in windows] == ["abdomen", "lung", "bone"] and windows[1]["level"] == -600.0
    assert cli.main(argv) == 0 and "0 case(s) converted, 3 already done" in capsys.readouterr().out

    # new scans for prediction: converted with the windows recorded in the converted dataset
    new = tmp_path / "new_scans"
    new.mkdir()
    hu = phantom(42)["hu"]
    write_nifti(hu, str(new / "scan_a_0000.nii.gz"))
    out = tmp_path / "converted_scans"
    assert cli.main(["convert-ct-windows", "--images", str(new), "-o", str(out), "--like", "735"]) == 0
    assert sorted(n for n in os.listdir(out) if n.endswith(".nii.gz")) == [f"scan_a_000{k}.nii.gz" for k in range(3)]
    for k, w in enumerate((PRESETS["abdomen"], Window("lung", -600.0, 1500.0), PRESETS["bone"])):
        np.testing.assert_array_equal(_read(str(out / f"scan_a_000{k}.nii.gz")), apply_window(hu, w))
    assert sitk.ReadImage(str(out / "scan_a_0001.nii.gz")).GetDirection() == DIRECTION


def test_command_refusals(tmp_path, capsys):
    make_ct_dataset(os.path.join(RAW, "Dataset736_PhantomMri"), train=(0,), unlabeled=(), test=(),
                    channel_names={"0": "MRI"})
    make_ct_dataset(os.path.join(RAW, "Dataset737_PhantomCt"), train=(0,), unlabeled=(), test=())
    # a non-CT source: one sentence, nothing written
    assert cli.main(["convert-ct-windows", "-d", "736", "--id", "738"]) == 2
    err = capsys.readouterr().err
    assert "channel 'MRI', not 'CT'" in err and "Traceback" not in err
    assert not [n for n in os.listdir(RAW) if n.startswith("Dataset738")]
    # a target id used by another dataset
    assert cli.main(["convert-ct-windows", "-d", "737", "--id", "736"]) == 2
    assert "already used by Dataset736_PhantomMri" in capsys.readouterr().err
    # --like of a dataset that was not converted
    scans = tmp_path / "scans"
    scans.mkdir()
    write_nifti(phantom(0)["hu"], str(scans / "a_0000.nii.gz"))
    assert cli.main(["convert-ct-windows", "--images", str(scans), "-o", str(tmp_path / "o"), "--like", "737"]) == 2
    assert "is not a dataset made by 'nnunet-ssl convert-ct-windows'" in capsys.readouterr().err
    # multi-channel new scans
    write_nifti(phantom(0)["hu"], str(scans / "a_0001.nii.gz"))
    assert cli.main(["convert-ct-windows", "-d", "737", "--id", "739"]) == 0
    capsys.readouterr()
    assert cli.main(["convert-ct-windows", "--images", str(scans), "-o", str(tmp_path / "o"), "--like", "739"]) == 2
    assert "needs one CT channel per case" in capsys.readouterr().err


def test_images_output_folder_refuses_other_windows(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    write_nifti(phantom(3)["hu"], str(scans / "b_0000.nii.gz"))
    out = str(tmp_path / "out")

    def converted_json(windows):
        return {"file_ending": ".nii.gz", "channel_names": {str(k): "noNorm" for k in range(len(windows))},
                RECORD_KEY: {"source": "X", "windows": [w.to_json() for w in windows]}}

    r = convert_folder(str(scans), out, converted_json(WINDOWS), "Dataset9_X", progress=False)
    assert r.converted == ["b"]
    assert convert_folder(str(scans), out, converted_json(WINDOWS), "Dataset9_X", progress=False).skipped == ["b"]
    with pytest.raises(UserError, match="converted with other windows"):
        convert_folder(str(scans), out, converted_json(WINDOWS[:1]), "Dataset9_X", progress=False)
    with pytest.raises(UserError, match="must differ from the input folder"):
        convert_folder(str(scans), str(scans), converted_json(WINDOWS), "Dataset9_X", progress=False)
