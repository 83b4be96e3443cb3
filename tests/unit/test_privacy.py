from cdr_billing.privacy import mask_number


def test_mask_keeps_head_and_last_two_digits():
    assert mask_number("+46701234567") == "+4670*****67"


def test_mask_hides_most_of_short_numbers():
    assert mask_number("12345") == "12***"


def test_mask_of_nothing_is_empty():
    assert mask_number(None) == ""
