"""Kaggle RLE (scripts/rle.py): hand-computed encodings, round trips, decoding column ranges,
streaming encoding block by block (in any order), and every malformed string rejected with a message."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.errors import InputError
from scripts.rle import (
    BlockRunEncoder,
    RleError,
    decode_columns,
    parse_rle,
    rle_decode,
    rle_encode,
    rle_encode_chunked,
)


def random_mask(rng, shape, density=0.3, blocky=True):
    """A random 0/1 mask; ``blocky`` gives long runs that wrap across columns."""
    if blocky:
        small = rng.random((-(-shape[0] // 3), -(-shape[1] // 2))) < density
        return np.repeat(np.repeat(small, 3, 0), 2, 1)[: shape[0], : shape[1]].astype(np.uint8)
    return (rng.random(shape) < density).astype(np.uint8)


def one_pixel(shape, row, col):
    mask = np.zeros(shape, np.uint8)
    mask[row - 1, col - 1] = 1  # 1-indexed like the reference
    return mask


# --- hand-computed encodings ------------------------------------------------------------------


def test_pixel_row2_col1_is_start_2():
    assert rle_encode(one_pixel((3, 2), 2, 1)) == "2 1"


def test_pixel_row1_col2_is_start_height_plus_1():
    assert rle_encode(one_pixel((3, 2), 1, 2)) == "4 1"  # H + 1 with H = 3


def test_full_second_column_is_one_run():
    mask = np.zeros((3, 2), np.uint8)
    mask[:, 1] = 1
    assert rle_encode(mask) == "4 3"


def test_run_wraps_from_bottom_of_one_column_to_top_of_next():
    mask = np.zeros((3, 2), np.uint8)
    mask[1:, 0] = 1  # rows 2-3 of column 1
    mask[0, 1] = 1  # row 1 of column 2
    assert rle_encode(mask) == "2 3"


def test_two_separate_runs_in_column_major_order():
    mask = np.array([[1, 0], [0, 1], [1, 1]], np.uint8)  # column 1: 1,0,1 ; column 2: 0,1,1
    assert rle_encode(mask) == "1 1 3 1 5 2"


def test_full_mask_is_one_run_and_nonzero_values_count_as_foreground():
    assert rle_encode(np.full((4, 5), 7, np.uint8)) == "1 20"
    assert rle_encode(np.ones((2, 2), bool)) == "1 4"


def test_empty_mask_encodes_as_empty_string_and_decodes_back():
    assert rle_encode(np.zeros((5, 7), np.uint8)) == ""
    for blank in ("", "   ", "\n"):
        decoded = rle_decode(blank, (5, 7))
        assert decoded.shape == (5, 7) and decoded.dtype == np.uint8 and not decoded.any()


def test_decode_of_hand_written_string():
    expected = np.array([[1, 0], [0, 1], [1, 1]], np.uint8)
    np.testing.assert_array_equal(rle_decode("1 1 3 1 5 2", (3, 2)), expected)


def test_encode_rejects_non_2d_masks():
    with pytest.raises(ValueError):
        rle_encode(np.zeros((2, 2, 3), np.uint8))


def test_parse_returns_zero_indexed_starts():
    starts, lengths = parse_rle("2 3 10 1", 12)
    assert starts.tolist() == [1, 9] and lengths.tolist() == [3, 1]


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (7, 5), (31, 17), (64, 33)])
@pytest.mark.parametrize("blocky", [True, False])
def test_round_trip_on_random_masks_of_odd_sizes(shape, blocky):
    rng = np.random.default_rng(sum(shape))
    mask = random_mask(rng, shape, blocky=blocky)
    decoded = rle_decode(rle_encode(mask), shape)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, mask)


def test_round_trip_matches_flatten_order_f():
    rng = np.random.default_rng(1)
    mask = random_mask(rng, (13, 11), blocky=False)
    starts, lengths = parse_rle(rle_encode(mask), mask.size)
    flat = np.zeros(mask.size, np.uint8)
    for s, n in zip(starts, lengths, strict=True):
        flat[s : s + n] = 1
    np.testing.assert_array_equal(flat, mask.flatten(order="F"))


# --- decode_columns ----------------------------------------------------------------------------


def test_decode_columns_equals_slicing_the_decoded_mask():
    rng = np.random.default_rng(2)
    shape = (23, 19)
    mask = random_mask(rng, shape)
    mask[:, 4:9] = 1  # long runs spanning several columns
    starts, lengths = parse_rle(rle_encode(mask), mask.size)
    ranges = [(0, 19), (0, 1), (18, 19), (4, 9), (5, 6), (3, 12), (7, 7)]
    ranges += [tuple(sorted(rng.integers(0, 20, 2))) for _ in range(20)]
    for a, b in ranges:
        band = decode_columns(starts, lengths, shape[0], a, b)
        assert band.shape == (shape[0], b - a) and band.dtype == np.uint8
        np.testing.assert_array_equal(band, mask[:, a:b], err_msg=f"columns {a}:{b}")


def test_decode_columns_with_no_runs_is_empty():
    starts, lengths = parse_rle("", 30)
    assert not decode_columns(starts, lengths, 5, 1, 4).any()


# --- BlockRunEncoder ----------------------------------------------------------------------------


def encode_in_blocks(mask, rng, empty_blocks=True):
    """Encode ``mask`` from random bands of rows, each cut into two blocks at a random column,
    given in a shuffled order; empty blocks are left out when ``empty_blocks`` is False."""
    blocks, top = [], 0
    while top < mask.shape[0]:
        bottom = min(mask.shape[0], top + int(rng.integers(1, 4)))
        cut = int(rng.integers(0, mask.shape[1] + 1))
        blocks += [(mask[top:bottom, :cut], top, 0), (mask[top:bottom, cut:], top, cut)]
        top = bottom
    encoder = BlockRunEncoder(mask.shape)
    for i in rng.permutation(len(blocks)):
        block, row, col = blocks[i]
        if empty_blocks or block.any():
            encoder.add(block, row, col)
    return encoder.result()


@pytest.mark.parametrize("seed", range(8))
def test_block_encoder_equals_whole_mask_encoding(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 12)), int(rng.integers(1, 30)))
    mask = random_mask(rng, shape, density=0.5, blocky=bool(seed % 2))
    assert encode_in_blocks(mask, rng) == rle_encode(mask)
    assert encode_in_blocks(mask, rng, empty_blocks=False) == rle_encode(mask)  # unseen pixels are background


def test_block_encoder_joins_runs_across_block_edges_and_column_ends():
    mask = np.zeros((4, 6), np.uint8)
    mask[2:, 1] = 1
    mask[:, 2:5] = 1  # one run from column 2 row 3 through column 5
    mask[:1, 5] = 1
    assert rle_encode(mask) == "7 15"
    encoder = BlockRunEncoder(mask.shape)
    for top, left in [(2, 3), (0, 0), (2, 0), (0, 3)]:  # four 2 x 3 blocks, bottom right first
        encoder.add(mask[top : top + 2, left : left + 3], top, left)
    assert encoder.result() == "7 15"
    starts, lengths = encoder.runs()
    assert starts.tolist() == [6] and lengths.tolist() == [15]


def test_block_encoder_full_and_empty_masks():
    encoder = BlockRunEncoder((5, 7))
    encoder.add(np.ones((5, 3), np.uint8), 0, 4)
    encoder.add(np.ones((5, 4), np.uint8), 0, 0)
    assert encoder.result() == "1 35"
    assert BlockRunEncoder((5, 7)).result() == ""
    encoder = BlockRunEncoder((5, 7))
    encoder.add(np.zeros((5, 7), np.uint8))
    encoder.add(np.zeros((0, 7), np.uint8), 5)
    assert encoder.result() == ""


def test_block_encoder_rejects_a_block_outside_the_mask_or_given_twice():
    encoder = BlockRunEncoder((4, 5))
    for block, top, left in [(np.ones((2, 2)), 3, 0), (np.ones((2, 2)), 0, 4), (np.ones((1, 1)), -1, 0)]:
        with pytest.raises(ValueError, match="does not fit a 4 x 5 mask"):
            encoder.add(block, top, left)
    encoder.add(np.ones((2, 2)), 1, 1)
    encoder.add(np.ones((2, 2)), 2, 2)  # shares pixel (2, 2)
    with pytest.raises(ValueError, match="same pixel"):
        encoder.runs()


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_chunked_encoding_reads_bands_of_rows_and_equals_the_whole_mask_encoding(rows):
    rng = np.random.default_rng(rows)
    mask = random_mask(rng, (23, 17), density=0.4)
    reads = []

    class Recording:
        shape = mask.shape

        def __getitem__(self, index):
            reads.append(index)
            return mask[index]

    assert rle_encode_chunked(Recording(), rows) == rle_encode(mask)
    assert reads == [slice(top, top + rows) for top in range(0, 23, rows)]


# --- malformed strings --------------------------------------------------------------------------


MALFORMED = {
    "odd token count": ("1 2 5", "odd number of tokens"),
    "non-numeric token": ("1 2 x 3", "'x' is not a whole number"),
    "decimal token": ("1 2.5", "'2.5' is not a whole number"),
    "huge token": ("1 99999999999999999999", "is not a whole number"),
    "start below 1": ("0 2", "start 0 is below 1"),
    "negative start": ("-3 2", "below 1"),
    "length below 1": ("3 0", "length 0"),
    "negative length": ("3 -1", "length -1"),
    "unsorted runs": ("4 2 1 2", "out of order"),
    "overlapping runs": ("1 5 4 2", "overlaps"),
    "run past the end": ("5 3", "ends past the image"),
    "start past the end": ("7 1", "ends past the image"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_rle_raises_rle_error_naming_the_slide(case):
    rle, expected = MALFORMED[case]
    with pytest.raises(RleError) as caught:
        parse_rle(rle, 6, "slide42")
    message = str(caught.value)
    assert "'slide42'" in message and expected in message
    assert "\n" not in message


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_rle_without_slide_id_still_raises(case):
    rle, expected = MALFORMED[case]
    with pytest.raises(RleError, match="^RLE: ") as caught:
        rle_decode(rle, (2, 3))
    assert expected in str(caught.value)


def test_rle_error_is_a_value_error_and_an_input_error():
    with pytest.raises(ValueError):
        rle_decode("1", (2, 2))
    assert issubclass(RleError, InputError)


def test_adjacent_runs_are_accepted_and_a_run_ending_at_the_last_pixel_fits():
    np.testing.assert_array_equal(rle_decode("1 2 3 1 6 1", (3, 2)), np.array([[1, 0], [1, 0], [1, 1]]))
