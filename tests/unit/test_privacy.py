from cdr_billing.privacy import mask_number


def test_mask_keeps_head_and_last_two_digits():
    assert mask_number("+46701234567") == "+4670*****67"


def test_mask_hides_most_of_short_numbers():
    assert mask_number("12345") == "12***"


def test_mask_of_nothing_is_empty():
    assert mask_number(None) == ""


def test_an_id_made_of_a_phone_number_s_characters_with_seven_digits_may_be_one():
    from cdr_billing.privacy import looks_like_phone_number, shown_id

    for number in ("+46701234567", "0701234567", "070-123 45 67", "(070) 123.4567", "1234567"):
        assert looks_like_phone_number(number), number
        assert shown_id(number) == mask_number(number)
    for other in ("123456", "SUB-00060", "acct-1234567", "C2001", "", "+46 70x1234567"):
        assert not looks_like_phone_number(other), other
        assert shown_id(other) == other


def test_numbers_inside_a_text_are_masked_but_not_hashes_decimals_or_dates():
    from cdr_billing.privacy import mask_phone_numbers

    text = (
        "row 12: destination +46701234567 and 0709876543 bad; sha 3f1234567890ab, "
        "amount 12345678.50, on 2026-11-02, id x1234567"
    )
    assert mask_phone_numbers(text) == (
        "row 12: destination +4670*****67 and 07098***43 bad; sha 3f1234567890ab, "
        "amount 12345678.50, on 2026-11-02, id x1234567"
    )
