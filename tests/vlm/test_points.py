import numpy as np
import pytest

from kiln.vlm.points import NONE_ANSWER, format_count, format_points, parse_count, parse_labels, parse_points

ONE = '<point x="61.5" y="40.6" alt="blue triangle">blue triangle</point>'
TWO = '<points x1="10.0" y1="20.5" x2="61.5" y2="40.6" alt="blue triangles">blue triangles</points>'


def test_format_points_matches_molmo_spelling():
    assert format_points([(61.5, 40.6)], "blue triangle") == ONE
    assert format_points([(61.5, 40.6), (10.0, 20.5)], "blue triangles") == TWO
    assert format_points([], "blue triangle") == NONE_ANSWER == "There are none."


def test_format_points_rounds_to_one_decimal():
    text = format_points([(61.54, 40.56), (0.0, 100.0), (7.0, 3.04)], "dot")
    assert text == '<points x1="0.0" y1="100.0" x2="7.0" y2="3.0" x3="61.5" y3="40.6" alt="dot">dot</points>'


def test_format_points_sorts_by_x_then_y_after_rounding():
    # Unrounded, 10.01 sorts before 10.04; rounded both are 10.0, so y decides and (10.04, 3.0) comes first.
    text = format_points([(10.01, 5.0), (50.0, 1.0), (10.04, 3.0)], "dot")
    assert text == '<points x1="10.0" y1="3.0" x2="10.0" y2="5.0" x3="50.0" y3="1.0" alt="dot">dot</points>'


def test_format_rejects_points_off_the_image_and_unsafe_alt():
    with pytest.raises(ValueError, match="outside the image"):
        format_points([(100.5, 3.0)], "dot")
    with pytest.raises(ValueError, match="alt"):
        format_points([(1.0, 3.0)], 'a "quoted" dot')


def test_format_count():
    assert format_count([(61.5, 40.6)], "blue triangle") == f"Counting the {ONE} shows a total of 1."
    assert format_count([(61.5, 40.6), (10.0, 20.5)], "blue triangles") == f"Counting the {TWO} shows a total of 2."
    assert format_count([], "blue triangle") == "There are none."


def test_parse_well_formed():
    assert parse_points(ONE) == [(61.5, 40.6)]
    assert parse_points(TWO) == [(10.0, 20.5), (61.5, 40.6)]
    assert parse_points(f"Counting the {TWO} shows a total of 2.") == [(10.0, 20.5), (61.5, 40.6)]
    assert parse_points(f"Here: {ONE} and {TWO}") == [(61.5, 40.6), (10.0, 20.5), (61.5, 40.6)]
    assert parse_points('<point x="61" y="  40.6" alt="a">a</point>') == [(61.0, 40.6)]
    assert parse_points('<point x="0" y="100.0" alt="">edge</point>') == [(0.0, 100.0)]


def test_parse_text_without_tags_is_empty():
    assert parse_points("There are none.") == []
    assert parse_points("I cannot see that.") == []
    assert parse_points("") == []


@pytest.mark.parametrize("text", [
    '<point x="61.5" y="40.6" alt="a">a',  # unclosed
    '<point x="61.5" y="40.6" alt="a">a</points>',  # closed with the other tag
    '<points x1="1.0" y1="2.0" x2="3.0" alt="a">a</points>',  # x2 without y2
    '<points x1="1.0" y1="2.0" x3="3.0" y3="4.0" alt="a">a</points>',  # numbering skips 2
    '<points x1="1.0" y1=',  # generation cut off mid-tag
    '<point x="abc" y="40.6" alt="a">a</point>',  # not a number
    '<point x="nan" y="40.6" alt="a">a</point>',
    '<point x="1e1" y="40.6" alt="a">a</point>',
    '<point x="100.1" y="40.6" alt="a">a</point>',  # out of range
    '<point x="-1.0" y="40.6" alt="a">a</point>',
    '<point x="61.5" y="40.6">a</point>',  # no alt
    '<point x="61.5" x="1.0" y="40.6" alt="a">a</point>',  # repeated attribute
    '<point x="61.5" y="40.6" z="1.0" alt="a">a</point>',  # unknown attribute
    '<point x="61.5" y="40.6" alt="a" junk>a</point>',
    '<point x="61.5" y="40.6" alt="a"><point x="1.0" y="1.0" alt="b">b</point></point>',  # nested
    f'{ONE} </point>',  # stray closing tag
])
def test_parse_malformed_is_none(text):
    assert parse_points(text) is None
    assert parse_count(text) is None


def test_round_trip_format_then_parse():
    rng = np.random.default_rng(0)
    for n in range(0, 8):
        points = [tuple(p) for p in rng.uniform(0, 100, size=(n, 2))]
        expected = sorted((round(x, 1), round(y, 1)) for x, y in points)
        assert parse_points(format_points(points, "red star")) == expected
        assert parse_points(format_count(points, "red star")) == expected
        assert parse_count(format_count(points, "red star")) == n


def test_parse_count():
    assert parse_count(f"Counting the {TWO} shows a total of 2.") == 2
    assert parse_count(f"Counting the {TWO} shows a total of 5.") == 5  # the stated total wins, as in Molmo
    assert parse_count("There are none.") == 0
    assert parse_count("There are 3.") == 3
    assert parse_count("There is 1.") == 1
    assert parse_count("Seven.") == 7  # a number word, as Molmo reads them
    assert parse_count(TWO) is None  # points but no stated total: the points are not counted, as in Molmo
    assert parse_count("There are 3 of them.") is None  # the last word is no number
    assert parse_count("The answer is 2.5") is None
    assert parse_count("I cannot tell.") is None


def test_parse_count_reads_a_stated_total_past_broken_tags():
    broken = '<points x1="1.0" y1="2.0" x2="3.0" alt="a">a</points>'
    assert parse_points(broken) is None
    assert parse_count(f"Counting the {broken} shows a total of 2.") == 2
    assert parse_count(f"a total of 4 {broken}") == 4  # "a total of N" anywhere, when the last word is no number


def test_parse_labels_reads_each_well_formed_tags_alt_in_order():
    assert parse_labels(f"Counting the {TWO} shows a total of 2. {ONE}") == ["blue triangles", "blue triangle"]
    assert parse_labels(NONE_ANSWER) == []
    assert parse_labels('<point x="1.0" y="2.0" alt="a" alt="b">a</point>') == []  # a repeated name: not a tag
