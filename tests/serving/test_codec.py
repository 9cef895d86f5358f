"""The v2 REST codec and validation against model metadata: every accepted form and every refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sluice.serving.errors import InvalidInput
from sluice.serving.protocol.v2_codec import (
    DecodedRequest,
    OutputEncoding,
    decode_infer_request,
    decode_response,
    encode_binary_response,
    encode_infer_response,
    encode_request,
    output_encoding,
    serialize_bytes,
    split_body,
    tensor_bytes,
)
from sluice.serving.tensors import V2_TO_NUMPY, InferResponse, ModelMetadata, Tensor, TensorSpec
from sluice.serving.validation import validate_request

META = ModelMetadata("m", "v1", "onnx", (TensorSpec("X", "FP32", (-1, 4)),), (TensorSpec("label", "INT64", (-1,)),))


def _req(**inp: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "X", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))}
    base.update(inp)
    return {"inputs": [base]}


def test_flat_and_nested_data_decode_to_the_same_row_major_array() -> None:
    flat = decode_infer_request(_req(data=[float(i) for i in range(8)]))
    nested = decode_infer_request(_req(data=[[0, 1, 2, 3], [4, 5, 6, 7]]))
    assert flat.inputs[0].data.dtype == np.float32
    assert flat.inputs[0].shape == (2, 4)
    np.testing.assert_array_equal(flat.inputs[0].data, nested.inputs[0].data)
    assert nested.inputs[0].data[1, 0] == 4


def test_id_outputs_and_parameters_pass_through() -> None:
    body = {**_req(), "id": "r-1", "outputs": [{"name": "label"}], "parameters": {"priority": 2}}
    req = decode_infer_request(body)
    assert (req.id, req.outputs, req.parameters) == ("r-1", ("label",), {"priority": 2})
    again = decode_infer_request(encode_request(req))
    assert again.outputs == ("label",)
    assert again.id == "r-1"


def test_bytes_inputs_round_trip() -> None:
    req = decode_infer_request({"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "data": ["a", "é"]}]})
    assert req.inputs[0].data.tolist() == [b"a", "é".encode()]
    assert req.inputs[0].datatype == "BYTES"
    assert encode_request(req)["inputs"][0]["data"] == ["a", "é"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ([], "JSON object"),
        ({"inputs": []}, "non-empty 'inputs'"),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, "no 'name'"),
        (_req(shape=[3, 4]), "shape [3, 4] needs 12 elements, data has 8"),
        (_req(datatype="FP33"), "unknown datatype 'FP33'"),
        (_req(data=["a"] * 8), "does not match datatype FP32 (got strings)"),
        (_req(datatype="INT32", data=[1.5] * 8), "does not match datatype INT32 (got floats)"),
        (_req(datatype="INT8", data=[300] * 8), "out of range for datatype INT8"),
        (_req(data=[[1, 2, 3, 4], [5, 6, 7]]), "ragged"),
        (_req(shape=[2, "4"]), "'shape' must be a list of integers"),
        (_req(shape=[-2, -4]), "negative dimension"),
        ({"inputs": [_req()["inputs"][0]] * 2}, "duplicate input names"),  # type: ignore[index]
        ({**_req(), "outputs": ["label"]}, "'outputs' must be an object"),
        ({**_req(), "id": 5}, "'id' must be a string"),
        (_req(parameters={"binary_data_size": 32}), "has no Inference-Header-Content-Length header"),
        ({**_req(), "outputs": [{"name": "label", "parameters": {"class_count": 2}}]}, "classification extension"),
        ({**_req(), "outputs": [{"name": "label", "parameters": {"binary_data": 1}}]}, "must be true or false"),
        ({**_req(), "parameters": {"binary_data_output": "yes"}}, "'binary_data_output' must be true or false"),
    ],
)
def test_malformed_requests_name_the_problem(body: object, needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode_infer_request(body)
    assert needle in err.value.message


@pytest.mark.parametrize(
    ("inputs", "outputs", "needle"),
    [
        ([{"name": "Y", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}], [], "missing input 'X'"),
        ([{"name": "X", "shape": [1, 4], "datatype": "FP64", "data": [0] * 4}], [], "datatype FP64 does not match"),
        ([{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [0] * 3}], [], "input 'X': shape [1, 3]"),
        ([{"name": "X", "shape": [4], "datatype": "FP32", "data": [0] * 4}], [], "input 'X': shape [4]"),
        (
            [
                {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4},
                {"name": "Z", "shape": [1], "datatype": "FP32", "data": [0]},
            ],
            [],
            "unknown input(s) ['Z']",
        ),
        ([{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}], [{"name": "nope"}], "['nope']"),
    ],
)
def test_validation_against_metadata_names_the_input(inputs: object, outputs: object, needle: str) -> None:
    req = decode_infer_request({"inputs": inputs, "outputs": outputs})
    with pytest.raises(InvalidInput) as err:
        validate_request(req, META)
    assert needle in err.value.message


def test_variable_batch_dimension_is_accepted() -> None:
    validate_request(decode_infer_request(_req(shape=[2, 4])), META)
    validate_request(decode_infer_request(_req(shape=[1, 4], data=[1, 2, 3, 4])), META)


def test_response_encoding_selects_outputs_in_requested_order() -> None:
    resp = InferResponse(
        "m",
        "v1",
        (Tensor("label", np.array([1, 0])), Tensor("probabilities", np.array([[0.1, 0.9], [0.8, 0.2]], np.float32))),
        id="x",
        parameters={"batch_size": "2"},
    )
    body = encode_infer_response(resp, ("probabilities",))
    assert [o["name"] for o in body["outputs"]] == ["probabilities"]
    assert body["outputs"][0]["shape"] == [2, 2]
    assert body["outputs"][0]["datatype"] == "FP32"
    assert body["id"] == "x"
    assert body["parameters"] == {"batch_size": "2"}
    full = encode_infer_response(resp)
    decoded = decode_response(full)
    np.testing.assert_array_equal(decoded.outputs[0].data, [1, 0])
    assert decoded.outputs[0].datatype == "INT64"
    with pytest.raises(InvalidInput, match=r"\['nope'\] do not exist"):
        encode_infer_response(resp, ("nope",))


# ---- binary tensor data extension ----


def _binary(inputs: list[tuple[str, np.ndarray, str]], **extra: object) -> tuple[bytes, str]:
    """A binary-extension body as tritonclient builds it: JSON header, then each tensor's bytes in input order."""
    header = []
    chunks = []
    for name, array, datatype in inputs:
        data = serialize_bytes(array) if datatype == "BYTES" else array.astype(array.dtype.newbyteorder("<")).tobytes()
        header.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(data)},
            }
        )
        chunks.append(data)
    head = json.dumps({"inputs": header, **extra}).encode()
    return head + b"".join(chunks), str(len(head))


def _decode(raw: bytes, length: str | None) -> object:
    head, binary = split_body(raw, length)
    return decode_infer_request(json.loads(head), None, binary)


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "INT16", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64"])
def test_binary_inputs_decode_to_the_same_array_for_every_numeric_datatype(datatype: str) -> None:
    dtype = V2_TO_NUMPY[datatype]
    array = (np.arange(12).reshape(3, 4) % (2 if datatype == "BOOL" else 100)).astype(dtype)
    raw, length = _binary([("X", array, datatype), ("s", np.array([b"ab", b""], dtype=object), "BYTES")])
    req = _decode(raw, length)
    assert req.inputs[0].data.dtype == dtype
    np.testing.assert_array_equal(req.inputs[0].data, array)
    assert req.inputs[1].data.tolist() == [b"ab", b""]
    assert not isinstance(req, DecodedRequest)  # binary bodies are never forwarded as they are


def test_binary_and_json_inputs_mix_and_transport_parameters_stay_out_of_the_request() -> None:
    raw, length = _binary([("X", np.ones((1, 4), np.float32), "FP32")], parameters={"binary_data_output": True, "p": 1})
    head, binary = split_body(raw, length)
    body = json.loads(head)
    body["inputs"].append({"name": "Y", "shape": [1], "datatype": "INT64", "data": [5]})
    req = decode_infer_request(body, None, binary)
    assert req.parameters == {"p": 1}
    assert req.inputs[1].data.tolist() == [5]
    assert output_encoding(body).default is True


@pytest.mark.parametrize(
    ("mutate", "length", "needle"),
    [
        (lambda raw: raw, "abc", "must be a byte count"),
        (lambda raw: raw, "99999", "but the body has only"),
        (lambda raw: raw[:-4], None, "runs past the end of the body"),
        (lambda raw: raw + b"xx", None, "2 binary bytes that no input's binary_data_size accounts for"),
    ],
)
def test_malformed_binary_bodies_name_the_problem(mutate: object, length: str | None, needle: str) -> None:
    raw, real_length = _binary([("X", np.ones((2, 4), np.float32), "FP32")])
    with pytest.raises(InvalidInput) as err:
        _decode(mutate(raw), length or real_length)  # type: ignore[operator]
    assert needle in err.value.message


def test_binary_size_must_match_the_shape_and_bytes_elements_their_lengths() -> None:
    raw, length = _binary([("X", np.ones((2, 4), np.float32), "FP32")])
    head, _ = split_body(raw, length)
    body = json.loads(head)
    body["inputs"][0]["shape"] = [3, 4]
    with pytest.raises(InvalidInput, match=r"needs 48 bytes, got 32"):
        decode_infer_request(body, None, split_body(raw, length)[1])
    words = b"\x05\x00\x00\x00ab"  # claims 5 bytes, has 2
    head = json.dumps(
        {"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(words)}}]}
    ).encode()
    with pytest.raises(InvalidInput, match="element 0 claims 5 bytes"):
        _decode(head + words, str(len(head)))
    bad = json.loads(head)
    bad["inputs"][0]["shape"] = [2]
    bad["inputs"][0]["parameters"]["binary_data_size"] = 6
    head2 = json.dumps(bad).encode()
    with pytest.raises(InvalidInput, match="ends after 1 of 2 elements"):
        _decode(head2 + b"\x02\x00\x00\x00ab", str(len(head2)))


def test_binary_response_moves_the_chosen_outputs_after_the_json_header() -> None:
    probs = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    resp = InferResponse("m", "v1", (Tensor("label", np.array([1, 0])), Tensor("probabilities", probs)))
    body = encode_infer_response(resp)
    payload, length = encode_binary_response(body, OutputEncoding(True, {"label": False}), resp.outputs)
    header = json.loads(payload[:length])
    assert header["outputs"][0]["data"] == [1, 0]
    assert header["outputs"][1]["parameters"]["binary_data_size"] == 16
    assert payload[length:] == tensor_bytes(resp.outputs[1]) == probs.tobytes()
