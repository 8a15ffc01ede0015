/*  pd_err — every error presenced reports, with its HTTP status, its Appwrite error `type`
 *  and its default message, from one table (libuv's UV_ERRNO_MAP pattern). Store nodes and the
 *  broker send the code over the wire; the gateway renders {message, code, type, version}. */
#ifndef PD_ERR_H
#define PD_ERR_H

#include "pd_util.h"

#define PD_APPWRITE_VERSION "1.9.6"

/*      name                        http  type                          default message */
#define PD_ERR_MAP(X)                                                                              \
    X(OK, 200, "", "")                                                                             \
    X(ARGUMENT_INVALID, 400, "general_argument_invalid", "Invalid param.")                         \
    X(BAD_REQUEST, 400, "general_bad_request", "Bad request.")                                     \
    X(QUERY_INVALID, 400, "general_query_invalid", "Invalid query.")                               \
    X(CURSOR_NOT_FOUND, 400, "general_cursor_not_found", "Cursor not found.")                      \
    X(ORDER_NULL, 400, "database_query_order_null", "Cannot order by a null value.")               \
    X(INVALID_STRUCTURE, 400, "document_invalid_structure", "Invalid document structure.")         \
    X(UNAUTHORIZED_SCOPE, 401, "general_unauthorized_scope",                                       \
      "The current user or API key does not have the required scopes to access the requested "    \
      "resource.")                                                                                 \
    X(USER_UNAUTHORIZED, 401, "user_unauthorized",                                                 \
      "The current user is not authorized to perform the requested action.")                      \
    X(JWT_INVALID, 401, "user_jwt_invalid", "Failed to verify JWT.")                               \
    X(KEY_EXPIRED, 401, "project_key_expired", "The project key has expired.")                     \
    X(KEY_INVALID, 401, "user_unauthorized", "The API key is not valid for this project.")         \
    X(FORBIDDEN, 403, "general_access_forbidden", "Access to this resource is forbidden.")         \
    X(PROJECT_NOT_FOUND, 404, "project_not_found",                                                 \
      "Project with the requested ID could not be found. Please check the value of the "          \
      "X-Appwrite-Project header to ensure the correct project ID is being used.")                 \
    X(PRESENCE_NOT_FOUND, 404, "presence_not_found",                                               \
      "Presence with the requested ID could not be found.")                                        \
    X(USER_NOT_FOUND, 404, "user_not_found", "User with the requested ID could not be found.")     \
    X(ROUTE_NOT_FOUND, 404, "general_route_not_found",                                             \
      "The requested route was not found. Please refer to the API docs and try again.")            \
    X(PRESENCE_EXISTS, 409, "presence_already_exists",                                             \
      "Presence with the requested ID already exists. Try again with a different ID or use "      \
      "ID.unique() to generate a unique ID.")                                                      \
    X(CONFLICT, 409, "document_update_conflict",                                                   \
      "Remote document is newer than local.")                                                      \
    X(PAYLOAD_TOO_LARGE, 413, "general_payload_too_large",                                         \
      "The request body is larger than the server accepts.")                                       \
    X(LIMIT_EXCEEDED, 403, "presence_limit_exceeded", "A limit of this project was reached.")     \
    X(SERVER_ERROR, 500, "general_server_error", "Server Error")                                   \
    X(STORE_FULL, 503, "general_service_unavailable",                                              \
      "The store node that owns this record is full.")                                             \
    X(UNAVAILABLE, 503, "general_service_unavailable",                                             \
      "The store node that owns this record is unavailable. Try again shortly.")                   \
    X(TIMEOUT, 503, "general_service_unavailable",                                                 \
      "The cluster did not answer in time. Try again shortly.")

typedef enum {
#define PD_ERR_ENUM(name, http, type, msg) PD_ERR_##name,
    PD_ERR_MAP(PD_ERR_ENUM)
#undef PD_ERR_ENUM
        PD_ERR__COUNT
} pd_err_t;

//  HTTP status for code (500 for an out-of-range code).
int pd_err_http(int code);
//  Appwrite error type string (static).
const char *pd_err_type(int code);
//  Default message (static).
const char *pd_err_msg(int code);
//  Appends the Appwrite error body {"message","code","type","version"} to b. msg may be
//  PD_STR_NULL for the default message.
void pd_err_render(pd_buf_t *b, int code, pd_str_t msg);

#endif
