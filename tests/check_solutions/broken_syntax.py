"""Cannot be imported: a syntax error (npfcn check exits 2 and says where)."""


def conv_forward_naive(x, w, b, conv_param)
    return None, None
