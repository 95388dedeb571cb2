package s3

import (
	"errors"
	"fmt"
	"net/http"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"

	"vdisk/internal/storage/objstore"
)

// ErrBadURL is returned by ParseURL for a string that is not
// s3://bucket[/prefix] with a valid bucket name.
var ErrBadURL = errors.New("not an s3://bucket/prefix URL")

// ErrPartialCredentials is returned by Config.Validate when only one of
// AccessKey and SecretKey is set.
var ErrPartialCredentials = errors.New("access key and secret key must be set together")

// statusErr is the sentinel each HTTP status maps to.
var statusErr = map[int]error{
	http.StatusNotFound:           objstore.ErrNotFound,
	http.StatusPreconditionFailed: objstore.ErrPreconditionFailed,
	// 409 ConditionalRequestConflict: a concurrent conditional write won.
	http.StatusConflict: objstore.ErrPreconditionFailed,
}

// codeErr maps S3 error codes for servers that answer with odd statuses.
var codeErr = map[string]error{
	"NoSuchKey":                  objstore.ErrNotFound,
	"NotFound":                   objstore.ErrNotFound,
	"PreconditionFailed":         objstore.ErrPreconditionFailed,
	"ConditionalRequestConflict": objstore.ErrPreconditionFailed,
}

// mapErr wraps err with the objstore sentinel its status or code names,
// keeping err in the chain.
func mapErr(err error) error {
	var api smithy.APIError
	if errors.As(err, &api) {
		if s, ok := codeErr[api.ErrorCode()]; ok {
			return fmt.Errorf("%w: %w", s, err)
		}
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		if s, ok := statusErr[re.HTTPStatusCode()]; ok {
			return fmt.Errorf("%w: %w", s, err)
		}
	}
	return err
}

func isStatus(err error, status int) bool {
	var re *awshttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == status
}
